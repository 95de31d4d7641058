//! `sink.toml`: `tollgate sink`'s own small file, since a sink runs apart from any gateway:
//! where the topic is, and where and how Parquet files are written. Relative paths are taken
//! from the file's folder.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tollgate_engine::config::{config_error, parse_toml, read_config_file};
use tollgate_sink::consume::{ConsumeConfig, defaults};
use toml::Spanned;

use super::{Result, default_topic, resolve};

/// `tollgate sink`'s config, validated.
#[derive(Debug)]
pub struct SinkConfig {
    /// What the sink consumes and writes.
    pub consume: ConsumeConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSinkConfig {
    kafka: RawSinkKafka,
    #[serde(default)]
    parquet: RawSinkParquet,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSinkKafka {
    brokers: Spanned<String>,
    #[serde(default = "default_topic")]
    topic: String,
    #[serde(default = "default_group")]
    group_id: String,
}

fn default_group() -> String {
    defaults::GROUP_ID.to_owned()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSinkParquet {
    dir: Option<String>,
    rows_max: Option<usize>,
    bytes_max: Option<usize>,
    roll_interval_ms: Option<u64>,
    dedup_window: Option<usize>,
}

impl SinkConfig {
    /// Reads and validates `path`; relative paths are taken from its folder.
    pub fn load(path: &Path) -> Result<SinkConfig> {
        let text = read_config_file(path)?;
        let origin = path.display().to_string();
        let base = path.parent().unwrap_or(Path::new("."));
        let raw: RawSinkConfig = parse_toml(&text, &origin)?;
        if raw.kafka.brokers.get_ref().trim().is_empty() {
            return Err(config_error(
                &text,
                &origin,
                "kafka.brokers",
                Some(raw.kafka.brokers.span()),
                "name at least one broker (host:port)".into(),
            ));
        }
        let positive = |value: Option<usize>, field: &str, default: usize| match value {
            Some(0) => Err(config_error(
                &text,
                &origin,
                field,
                None,
                "must be above 0".into(),
            )),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let parquet = raw.parquet;
        Ok(SinkConfig {
            consume: ConsumeConfig {
                brokers: raw.kafka.brokers.into_inner(),
                topic: raw.kafka.topic,
                group_id: raw.kafka.group_id,
                data_dir: resolve(base, parquet.dir.as_deref().unwrap_or("data")),
                rows_max: positive(parquet.rows_max, "parquet.rows_max", defaults::ROWS_MAX)?,
                bytes_max: positive(parquet.bytes_max, "parquet.bytes_max", defaults::BYTES_MAX)?,
                roll_interval: parquet
                    .roll_interval_ms
                    .map_or(defaults::ROLL_INTERVAL, Duration::from_millis),
                dedup_window: positive(
                    parquet.dedup_window,
                    "parquet.dedup_window",
                    defaults::DEDUP_WINDOW,
                )?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_sink_config_is_valid_and_bad_ones_say_where() {
        let manifest = std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
        let dir = Path::new(&manifest).join("config");
        let config = SinkConfig::load(&dir.join("sink.example.toml")).unwrap();
        let consume = &config.consume;
        assert_eq!(consume.brokers, "127.0.0.1:9092");
        assert_eq!(consume.group_id, "tollgate-sink");
        assert_eq!(consume.data_dir, dir.join("data"));
        assert_eq!(consume.roll_interval, Duration::from_secs(60));
        let temp =
            std::env::temp_dir().join(format!("tollgate-sink-config-{}", std::process::id()));
        std::fs::create_dir_all(&temp).unwrap();
        let check = |text: &str, expect: &str| {
            let path = temp.join("sink.toml");
            std::fs::write(&path, text).unwrap();
            let message = SinkConfig::load(&path).unwrap_err().to_string();
            assert!(message.contains(expect), "{message}");
            assert!(message.contains("sink.toml:"), "{message}");
        };
        check("[parquet]\ndir = \"x\"\n", "kafka");
        check("[kafka]\nbrokers = \" \"\n", "kafka.brokers");
        check(
            "[kafka]\nbrokers = \"b:1\"\n[parquet]\nrows_max = 0\n",
            "parquet.rows_max",
        );
        check("[kafka]\nbrokers = \"b:1\"\ntopics = \"t\"\n", "topics");
        std::fs::remove_dir_all(&temp).unwrap();
    }
}
