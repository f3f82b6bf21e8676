//! Command implementations: each parses its inputs, calls the library, prints a summary.

use std::path::Path;

use anyhow::{Context, Result};
use vault::pseudonym::{Pseudonymizer, SiteId};

/// `hbs deid`: de-identify a tree and print the counts; the report is in OUT/report.json.
pub fn deid(site: &str, key_file: &Path, input: &Path, output: &Path) -> Result<()> {
    let site = SiteId::new(site)?;
    let secret = std::fs::read(key_file)
        .with_context(|| format!("cannot read the key file {}", key_file.display()))?;
    let keys = Pseudonymizer::new(&secret)?;
    let report = vault::tree::deid_tree(input, output, &site, &keys).with_context(|| {
        format!(
            "cannot de-identify {} into {}",
            input.display(),
            output.display()
        )
    })?;
    println!(
        "{} accepted, {} quarantined, {} rejected; report: {}",
        report.accepted,
        report.quarantined,
        report.rejected,
        output.join("report.json").display()
    );
    Ok(())
}
