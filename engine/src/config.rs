//! Reading TOML config with errors that name the file, line, column and field.
//!
//! Every config type of the engine goes through [`parse_toml`], so every bad file is reported
//! the same way: ``rates.toml:12:17: `version[0].model[3].input_per_mtok`: ...``.

use std::io::Read;
use std::ops::Range;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::limits::CONFIG_BYTES_MAX;

/// Reads a config file, refusing one larger than [`CONFIG_BYTES_MAX`].
pub fn read_config_file(path: &Path) -> Result<String> {
    let origin = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| Error::ConfigRead {
        origin: origin.clone(),
        source,
    })?;
    let mut text = String::new();
    file.take(CONFIG_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|source| Error::ConfigRead {
            origin: origin.clone(),
            source,
        })?;
    if text.len() as u64 > CONFIG_BYTES_MAX {
        return Err(Error::ConfigTooLarge {
            origin,
            limit_bytes: CONFIG_BYTES_MAX,
        });
    }
    Ok(text)
}

/// Deserializes `text` as TOML, naming `origin`, line, column and field path in any error.
pub fn parse_toml<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_error(text, origin, "", &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // `toml::Spanned` shows up in the path as a private segment; readers want the key.
        let field = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "")
            .replace("$__serde_spanned_private_value", "");
        toml_error(text, origin, &field, e.inner())
    })
}

fn toml_error(text: &str, origin: &str, field: &str, e: &toml::de::Error) -> Error {
    config_error(text, origin, field, e.span(), e.message().trim().to_owned())
}

/// Builds an [`Error::Config`] pointing at `span` of `text`.
pub fn config_error(
    text: &str,
    origin: &str,
    field: &str,
    span: Option<Range<usize>>,
    reason: String,
) -> Error {
    let (line, column) = span.map_or((1, 1), |s| line_column(text, s.start));
    Error::Config {
        origin: origin.to_owned(),
        line,
        column,
        field: if field.is_empty() || field == "." {
            "(document)".to_owned()
        } else {
            field.to_owned()
        },
        reason,
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 11), (2, 5)); // "bé =" is four characters
        assert_eq!(line_column(text, 999), (3, 1));
    }
}
