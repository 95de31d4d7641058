//! The console's files, embedded at build time from `gateway/console/dist` (made from
//! `gateway/console/src` and the pinned npm packages by `gateway/console/build.sh`; the build
//! is committed, and CI checks it is what the sources and lock file make).

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// One embedded file.
pub struct Asset {
    /// Its name under `/console/assets/` (the page itself is at `/console`).
    pub name: &'static str,
    /// Its media type.
    pub content_type: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
    etag: OnceLock<String>,
}

impl Asset {
    const fn new(name: &'static str, content_type: &'static str, bytes: &'static [u8]) -> Asset {
        Asset {
            name,
            content_type,
            bytes,
            etag: OnceLock::new(),
        }
    }

    /// A strong validator of its bytes (the first 16 bytes of their SHA-256, quoted).
    pub fn etag(&self) -> &str {
        self.etag.get_or_init(|| {
            let digest = Sha256::digest(self.bytes);
            format!("\"{}\"", crate::control::session::hex(&digest[..16]))
        })
    }
}

/// The page.
pub static INDEX: Asset = Asset::new(
    "index.html",
    "text/html; charset=utf-8",
    include_bytes!("../../console/dist/index.html"),
);

static FILES: [Asset; 3] = [
    Asset::new(
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/dist/app.js"),
    ),
    Asset::new(
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/dist/app.css"),
    ),
    Asset::new(
        "licenses.txt",
        "text/plain; charset=utf-8",
        include_bytes!("../../console/dist/licenses.txt"),
    ),
];

/// The file served as `/console/assets/{name}`.
pub fn find(name: &str) -> Option<&'static Asset> {
    FILES.iter().find(|a| a.name == name)
}
