//! Settings: command-line flags (each also read from `WARREN_<FLAG>`), an optional TOML file,
//! and built-in defaults, in that order of precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;
use warren_core::ConnectionConfig;
use warren_core::auth::User;

/// Command-line flags.
#[derive(Debug, Default, Parser)]
#[command(name = "warren", version, about = "Warren: an AMQP 0-9-1 message broker")]
pub struct Cli {
    /// Address for AMQP 0-9-1 over TCP [default: 0.0.0.0:5672].
    #[arg(long, env = "WARREN_AMQP_LISTEN", value_name = "ADDR")]
    pub amqp_listen: Option<SocketAddr>,
    /// Directory for metadata and message logs [default: ./warren-data].
    #[arg(long, env = "WARREN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML file with the same settings and more; unknown keys are an error.
    #[arg(long, env = "WARREN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The config file's shape. Every key is optional; unknown keys are refused by name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// As `--amqp-listen`.
    pub amqp_listen: Option<SocketAddr>,
    /// As `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// Connection limits offered to clients.
    #[serde(default)]
    pub amqp: AmqpLimits,
    /// Users; when given, they replace the default guest user.
    pub users: Option<Vec<UserConfig>>,
}

/// `[amqp]`: what connection.tune offers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AmqpLimits {
    /// Largest frame in octets (4096 or more).
    pub frame_max: Option<u32>,
    /// Highest channel number.
    pub channel_max: Option<u16>,
    /// Heartbeat interval in seconds; 0 disables.
    pub heartbeat: Option<u16>,
}

/// `[[users]]`: one login.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UserConfig {
    /// Login name.
    pub name: String,
    /// Password.
    pub password: String,
    /// Only from loopback addresses.
    #[serde(default)]
    pub loopback_only: bool,
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The config file is not valid; the message names the line and the key.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("config: {0}")]
    Invalid(String),
}

/// Everything the server needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// AMQP over TCP listen address.
    pub amqp_listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Connection limits and timeouts.
    pub connection: ConnectionConfig,
    /// Users allowed to log in.
    pub users: Vec<User>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            amqp_listen: SocketAddr::from(([0, 0, 0, 0], 5672)),
            data_dir: PathBuf::from("./warren-data"),
            connection: ConnectionConfig::default(),
            users: vec![User::guest()],
        }
    }
}

impl Settings {
    /// Resolves flags over the config file over defaults.
    pub fn load(cli: &Cli) -> Result<Settings, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Settings::resolve(cli, file)
    }

    fn resolve(cli: &Cli, file: FileConfig) -> Result<Settings, ConfigError> {
        let mut s = Settings::default();
        if let Some(a) = cli.amqp_listen.or(file.amqp_listen) {
            s.amqp_listen = a;
        }
        if let Some(d) = cli.data_dir.clone().or(file.data_dir) {
            s.data_dir = d;
        }
        if let Some(f) = file.amqp.frame_max {
            if f < warren_codec::FRAME_MIN_SIZE {
                return Err(ConfigError::Invalid(format!(
                    "amqp.frame-max = {f} is below the AMQP minimum 4096"
                )));
            }
            s.connection.frame_max = f;
        }
        if let Some(c) = file.amqp.channel_max {
            s.connection.channel_max = c;
        }
        if let Some(h) = file.amqp.heartbeat {
            s.connection.heartbeat = h;
        }
        if let Some(users) = file.users {
            s.users = users
                .into_iter()
                .map(|u| User { name: u.name, password: u.password, loopback_only: u.loopback_only })
                .collect();
        }
        Ok(s)
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = parse("amqp-listen = \"127.0.0.1:1\"\n\n[amqp]\nheartbeet = 5\n").err().unwrap_or_default();
        assert!(err.contains("heartbeet") && err.contains("line 4"), "{err}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let file =
            parse("amqp-listen = \"127.0.0.1:1000\"\ndata-dir = \"/tmp/x\"\n[amqp]\nheartbeat = 5").ok();
        let cli = Cli { amqp_listen: Some("127.0.0.1:2000".parse().ok()).flatten(), ..Cli::default() };
        let s = Settings::resolve(&cli, file.unwrap_or_default()).ok();
        let s = s.as_ref();
        assert_eq!(s.map(|s| s.amqp_listen.port()), Some(2000));
        assert_eq!(s.map(|s| s.data_dir.clone()), Some(PathBuf::from("/tmp/x")));
        assert_eq!(s.map(|s| s.connection.heartbeat), Some(5));
    }

    #[test]
    fn tiny_frame_max_is_refused() {
        let file = parse("[amqp]\nframe-max = 100").ok().unwrap_or_default();
        assert!(matches!(Settings::resolve(&Cli::default(), file), Err(ConfigError::Invalid(_))));
    }
}
