//! Tools that ship beside the gateway, not inside it: the load generator
//! (`floodgate-load`) and the demo upstream (`floodgate-demo`) that the
//! README's demo, the docker-compose stack, the integration tests and the
//! benchmarks start.

pub mod demo;
pub mod llm;
pub mod load;

/// Parses a duration string with a unit: `"250ms"`, `"5s"`, `"1m"`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    if t.is_empty() || !t.chars().any(|c| c.is_ascii_alphabetic()) {
        return Err(format!(
            "{s:?} needs a unit, e.g. \"250ms\", \"5s\", \"1m\""
        ));
    }
    humantime::parse_duration(t).map_err(|e| format!("{s:?} is not a duration: {e}"))
}
