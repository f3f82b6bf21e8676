//! `hbs`: the honest-broker gateway of ProstateNET. This binary only wires the crates
//! together: command-line parsing, configuration, and (once the gateway lands) the HTTPS
//! server. Domain logic lives in the library crates.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod cli;

/// The honest-broker gateway of ProstateNET.
#[derive(Parser)]
#[command(name = "hbs", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// De-identify a folder tree with the engine the gateway uses (a site's preview).
    Deid {
        /// The site code the data comes from (e.g. SITE_A).
        #[arg(long)]
        site: String,
        /// File holding the pseudonymization secret (at least 32 bytes).
        #[arg(long)]
        key_file: PathBuf,
        /// Folder of identifiable DICOM files.
        #[arg(long = "in")]
        input: PathBuf,
        /// Folder for de-identified files and report.json.
        #[arg(long = "out")]
        output: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hbs: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Deid {
            site,
            key_file,
            input,
            output,
        } => cli::deid(&site, &key_file, &input, &output).context("hbs deid"),
    }
}
