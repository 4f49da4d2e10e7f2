//! The controller's configuration files as `nodemedic controller` reads them: `--notifications`
//! (channels and routes, checked by [`NotificationsConfig::validate`]) and `--executors` (which
//! executor carries out each step), both read strictly (a repeated key is refused). A library
//! module so the fuzz targets parse them with the code the controller runs.

use anyhow::Result;
use nodemedic_controller::executors::ExecutorsConfig;
use nodemedic_controller::notify::NotificationsConfig;

/// Reads and checks a notifications file's text; its Secrets are read once the controller leads.
pub fn parse_notifications(text: &str) -> Result<NotificationsConfig> {
    let config: NotificationsConfig = nodemedic_core::input::from_yaml_str(text)?;
    config.validate()?;
    Ok(config)
}

/// Reads an executors file's text. What needs the cluster (provider credentials, webhook token
/// files) is checked when the controller builds its executors.
pub fn parse_executors(text: &str) -> Result<ExecutorsConfig> {
    Ok(nodemedic_core::input::from_yaml_str(text)?)
}
