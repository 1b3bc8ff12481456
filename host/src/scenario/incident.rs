//! Placeholder until written.

pub async fn run(name: &str, _options: &super::Options) -> anyhow::Result<()> {
    anyhow::bail!("{name}: not written yet")
}
