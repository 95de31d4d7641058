//! Allocations per call through the whole gateway, counted: the gateway, in this process,
//! in front of the load harness's mock provider, called over loopback by a client that
//! allocates nothing once warm; the same calls sent to the mock directly are subtracted, so
//! what is left is the gateway's (the request path, the metered body, the usage event and its
//! group commit; a Parquet roll, once a minute, falls outside the window).
//!
//! Counts do not depend on the allocator, so this one counts calls to the system's
//! (the gateway's own binary uses mimalloc). Run with
//! `cargo run --release -p tollgate-benches --bin call-allocations [calls]`.

use std::alloc::System;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tollgate_gateway::config::Config;
use tollgate_gateway::runtime::{self, StartOptions};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Calls before counting: connections opened, caches and pools filled.
const WARM_UP_CALLS: usize = 500;

/// The harness's request: a 1 KB prompt, 16 tokens out, streamed or not.
fn request_body(model: &str, stream: bool) -> String {
    let text = "The quick brown fox jumps over the lazy dog near the riverbank. ".repeat(16);
    let stream = if stream { ",\"stream\":true" } else { "" };
    format!(
        "{{\"model\":\"{model}\",\"max_tokens\":16,\"messages\":[{{\"role\":\"system\",\
         \"content\":\"You are a load test.\"}},{{\"role\":\"user\",\"content\":\"{text}\"}}]{stream}}}"
    )
}

/// A keep-alive HTTP/1.1 client over one connection whose buffers are reused, so a warm call
/// allocates nothing of its own.
struct Client {
    stream: TcpStream,
    request: Vec<u8>,
    response: Vec<u8>,
}

impl Client {
    fn new(address: SocketAddr, path: &str, key: &str, body: &str) -> Client {
        let stream = TcpStream::connect(address).unwrap();
        stream.set_nodelay(true).unwrap();
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {key}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        Client {
            stream,
            request,
            response: Vec::with_capacity(1 << 16),
        }
    }

    /// Sends the request and reads the whole answer (a length or chunked body); its status.
    fn call(&mut self) -> u16 {
        self.stream.write_all(&self.request).unwrap();
        self.response.clear();
        let mut piece = [0_u8; 16 * 1024];
        loop {
            let n = self.stream.read(&mut piece).unwrap();
            assert!(n > 0, "the server closed the connection");
            self.response.extend_from_slice(&piece[..n]);
            if let Some(status) = complete(&self.response) {
                return status;
            }
        }
    }
}

/// The status of a response once `bytes` hold all of it.
fn complete(bytes: &[u8]) -> Option<u16> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&bytes[..head_end]).unwrap();
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let body = &bytes[head_end..];
    // Header names compared without allocating: the client's own count must stay zero.
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    match length {
        Some(length) => (body.len() >= length).then_some(status),
        None => body.ends_with(b"0\r\n\r\n").then_some(status),
    }
}

/// Allocations and bytes allocated per call, over `calls` calls.
fn count(client: &mut Client, calls: usize) -> (f64, f64) {
    for _ in 0..WARM_UP_CALLS {
        assert_eq!(
            client.call(),
            200,
            "{}",
            String::from_utf8_lossy(&client.response)
        );
    }
    let region = Region::new(GLOBAL);
    for _ in 0..calls {
        assert_eq!(client.call(), 200);
    }
    let change = region.change();
    let per_call = |n: usize| n as f64 / calls as f64;
    (
        per_call(change.allocations + change.reallocations),
        per_call(change.bytes_allocated),
    )
}

fn main() {
    let calls: usize = std::env::args()
        .nth(1)
        .map_or(5_000, |n| n.parse().expect("calls: a number"));
    let dir = std::env::temp_dir().join(format!("tollgate-allocations-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (mock, gateway, (stop, serving)) = runtime.block_on(async {
        let listener = tollgate_loadtest::mock::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let mock = listener.local_addr().unwrap();
        tokio::spawn(tollgate_loadtest::mock::serve(listener, Default::default()));
        let config = dir.join("tollgate.toml");
        std::fs::write(
            dir.join("rates.toml"),
            include_str!("../../gateway/config/rates.example.toml"),
        )
        .unwrap();
        std::fs::write(
            &config,
            format!(
                "rate_card = \"rates.toml\"\n\
                 [server]\nlisten = \"127.0.0.1:0\"\nworker_threads = 1\n\
                 [[provider]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"http://{mock}/v1\"\n\
                 [[team]]\nname = \"bench\"\n[[project]]\nname = \"bench\"\nteam = \"bench\"\n\
                 [[allocation]]\nname = \"bench\"\nproject = \"bench\"\n",
            ),
        )
        .unwrap();
        let config = Config::load(&config).unwrap();
        let env = |name: &str| (name == "TOLLGATE_ADMIN_TOKEN").then(|| "bench-admin".to_string());
        let running = runtime::start(config, env, StartOptions::default())
            .await
            .unwrap();
        let listener = runtime::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let gateway = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(running.serve(listener, async {
            let _ = stopped.await;
        }));
        (mock, gateway, (stop, serving))
    });
    let key = {
        let mut admin = Client::new(
            gateway,
            "/admin/v1/keys",
            "bench-admin",
            "{\"allocation\":\"bench\",\"user\":\"bench\"}",
        );
        assert_eq!(admin.call(), 201);
        let body = String::from_utf8_lossy(&admin.response);
        let at = body.find("\"key\":\"").unwrap() + 7;
        body[at..].split('"').next().unwrap().to_string()
    };
    println!("| call | direct: allocations / bytes | through tollgate | tollgate's own |");
    println!("|---|---|---|---|");
    for stream in [false, true] {
        let mut direct = Client::new(
            mock,
            "/v1/chat/completions",
            "unused",
            &request_body("gpt-4o-mini", stream),
        );
        let mut through = Client::new(
            gateway,
            "/v1/chat/completions",
            &key,
            &request_body("openai/gpt-4o-mini", stream),
        );
        let (direct_n, direct_bytes) = count(&mut direct, calls);
        let (through_n, through_bytes) = count(&mut through, calls);
        println!(
            "| {} | {direct_n:.1} / {direct_bytes:.0} | {through_n:.1} / {through_bytes:.0} | {:.1} / {:.0} |",
            if stream {
                "streamed (17 events)"
            } else {
                "1 KB prompt"
            },
            through_n - direct_n,
            through_bytes - direct_bytes,
        );
    }
    let _ = stop.send(());
    runtime.block_on(serving).unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
