//! `hbs`: the honest-broker gateway of ProstateNET. This binary only wires the crates
//! together: command-line parsing, configuration and output. Domain logic lives in the
//! library crates (`vault` for now; the HTTPS gateway, audit log and policy follow).
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

mod audit_bench;
mod audit_cli;
mod audit_routes;
mod bench;
mod catalogue;
mod cli;
mod client;
mod cohort_bench;
mod contribute;
mod dicomweb;
mod enclave;
mod govern_cli;
mod governance;
mod jobs;
mod policy_bench;
mod qido;
mod record;
mod routes;
mod search;
mod server;

/// The honest-broker gateway of ProstateNET.
#[derive(Parser)]
#[command(name = "hbs", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the vault keeps its data: the embedded default unless told otherwise.
#[derive(Args, Clone, Debug)]
pub struct DataArgs {
    /// Configuration file (TOML: data, database_url, blob_store, listen,
    /// signed_only_sites, [catalogue] cutoff and countries). Flags and HBS_*
    /// variables override it; the embedded defaults fill the rest.
    #[arg(long, env = "HBS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data folder: keys, the SQLite database and local blobs [default: hbs-data].
    #[arg(long, env = "HBS_DATA")]
    pub data: Option<PathBuf>,
    /// Database URL (sqlite://... or postgres://...); default: SQLite in the data folder.
    #[arg(long, env = "HBS_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Blob store (local:PATH, objfs:PATH, memory:); default: local:DATA/blobs.
    #[arg(long, env = "HBS_BLOB_STORE")]
    pub blob_store: Option<String>,
}

/// The configuration file's keys; an unknown key is an error, not a silent no-op.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data: Option<PathBuf>,
    database_url: Option<String>,
    blob_store: Option<String>,
    listen: Option<std::net::SocketAddr>,
    signed_only_sites: Option<Vec<String>>,
    catalogue: Option<catalogue::CatalogueConfig>,
}

impl DataArgs {
    fn file(&self) -> Result<FileConfig> {
        match &self.config {
            None => Ok(FileConfig::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the configuration {}", p.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("configuration {} is not valid", p.display()))
            }
        }
    }

    /// The vault configuration: flags and HBS_* variables, then the file, then defaults.
    fn config(&self) -> Result<vault::vault::VaultConfig> {
        let f = self.file()?;
        Ok(vault::vault::VaultConfig {
            data_dir: self
                .data
                .clone()
                .or(f.data)
                .unwrap_or_else(|| PathBuf::from("hbs-data")),
            database_url: self.database_url.clone().or(f.database_url),
            blob_store: self.blob_store.clone().or(f.blob_store),
        })
    }

    fn data_dir(&self) -> Result<PathBuf> {
        Ok(self.config()?.data_dir)
    }

    /// Sites that must sign their contributions: the flag or HBS_SIGNED_ONLY_SITES when
    /// given, else the file's `signed_only_sites`. Each must be a valid site code.
    /// The catalogue's settings (the file's `[catalogue]`; defaults otherwise).
    fn catalogue(&self) -> Result<catalogue::CatalogueConfig> {
        Ok(self.file()?.catalogue.unwrap_or_default())
    }

    fn signed_only_sites(&self, flag: Vec<String>) -> Result<std::collections::BTreeSet<String>> {
        let list = if flag.is_empty() {
            self.file()?.signed_only_sites.unwrap_or_default()
        } else {
            flag
        };
        list.into_iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                vault::pseudonym::SiteId::new(s.trim())
                    .map(|id| id.as_str().to_string())
                    .map_err(|e| anyhow::anyhow!("signed-only site: {e}"))
            })
            .collect()
    }

    fn listen(&self, flag: Option<std::net::SocketAddr>) -> Result<std::net::SocketAddr> {
        let default = std::net::SocketAddr::from(([127, 0, 0, 1], 8443));
        Ok(flag.or(self.file()?.listen).unwrap_or(default))
    }
}

/// `hbs cohort`.
#[derive(Subcommand)]
enum CohortCmd {
    /// Count the patients, studies and series of a cohort, optionally broken down.
    Count {
        #[command(flatten)]
        client: client::ClientArgs,
        /// The cohort definition (JSON; every field optional); default: everything.
        #[arg(long)]
        cohort: Option<PathBuf>,
        /// Break down by site, vendor, split and/or origin (comma-separated).
        #[arg(long, value_delimiter = ',')]
        by: Vec<String>,
    },
    /// Measure count latency on a generated catalogue; updates BENCHMARKS.md.
    Bench {
        /// Scratch folder.
        #[arg(long, default_value = "target/cohort-bench")]
        work: PathBuf,
        /// Also measure on this PostgreSQL (a fresh database is created in it, then dropped).
        #[arg(long)]
        pg: Option<String>,
        /// Patients in the catalogue.
        #[arg(long, default_value_t = 20_000)]
        patients: usize,
        /// Instance rows in the catalogue.
        #[arg(long, default_value_t = 10_000_000)]
        instances: u64,
        /// The report to update.
        #[arg(long, default_value = "BENCHMARKS.md")]
        report: PathBuf,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a data folder: broker secret, key-encryption key, database (idempotent).
    Init {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Run the HTTPS gateway (mTLS on every route). Initializes the data folder if needed.
    Serve {
        #[command(flatten)]
        data: DataArgs,
        /// Address to listen on [default: 127.0.0.1:8443].
        #[arg(long, env = "HBS_LISTEN")]
        listen: Option<std::net::SocketAddr>,
        /// Sites whose contributions must be signed (a manifest signed with the data
        /// provider's key); plain STOW-RS from them is refused. Repeat, or comma-separate.
        #[arg(
            long = "signed-only-site",
            env = "HBS_SIGNED_ONLY_SITES",
            value_delimiter = ','
        )]
        signed_only_sites: Vec<String>,
    },
    /// A site's upload: sign a manifest per batch, store over STOW-RS, verify and keep the
    /// gateway's signed receipts; resumes where an interrupted run stopped.
    Contribute {
        #[command(flatten)]
        client: client::ClientArgs,
        /// Instances per request.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Progress file (SHA-256 of each file sent and its outcome; no path, no value).
        #[arg(long, default_value = "hbs-contribute-state.json")]
        state: PathBuf,
        /// Where the verified receipts are saved.
        #[arg(long, default_value = "hbs-receipts")]
        receipts: PathBuf,
        /// The folder to contribute.
        dir: PathBuf,
    },
    /// Ask the gateway who you are (role, site, name, serial of your certificate).
    Whoami {
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Jobs: run an approved service request's model in the compute enclave.
    #[command(subcommand)]
    Job(JobCmd),
    /// The model registry; with `--add`, bring a model to it (prints its SHA-256, what a
    /// service request names).
    Models {
        #[command(flatten)]
        client: client::ClientArgs,
        /// An ONNX file to register.
        #[arg(long, requires = "card")]
        add: Option<PathBuf>,
        /// Its card (JSON: name, version, scenario, task, inputs, outputs).
        #[arg(long, requires = "add")]
        card: Option<PathBuf>,
    },
    /// The compute enclave's sandbox: check it, probe it.
    #[command(subcommand)]
    Enclave(EnclaveCmd),
    /// The repository's key performance indicators beside their targets.
    Kpi {
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Count a cohort (patients, studies, series), protected: small cells suppressed,
    /// the rest perturbed and rounded.
    #[command(subcommand)]
    Cohort(CohortCmd),
    /// Search the pseudonymized catalogue over QIDO-RS (studies, series or instances).
    Search {
        #[command(flatten)]
        client: client::ClientArgs,
        /// studies, series or instances.
        #[arg(value_parser = ["studies", "series", "instances"])]
        level: String,
        /// Within this (pseudonymized) study.
        #[arg(long)]
        study: Option<String>,
        /// Within this (pseudonymized) series (needs --study).
        #[arg(long, requires = "study")]
        series: Option<String>,
        /// Most results.
        #[arg(long)]
        limit: Option<u32>,
        /// Results to skip.
        #[arg(long)]
        offset: Option<u32>,
        /// Matching keys, KEY=VALUE (PatientID, StudyDate, Modality, ModalitiesInStudy,
        /// Manufacturer, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, SOPClassUID).
        filters: Vec<String>,
        /// Researchers: the data grant to search under (its ID).
        #[arg(long, requires = "purpose")]
        grant: Option<String>,
        /// Researchers: the purpose the grant was approved for.
        #[arg(long, requires = "grant")]
        purpose: Option<String>,
    },
    /// Data, service and policy requests: submit, amend, list, show, withdraw.
    #[command(subcommand)]
    Request(govern_cli::RequestCmd),
    /// Ethics board reviews: list, approve, reject.
    #[command(subcommand)]
    Review(govern_cli::ReviewCmd),
    /// Grants: list, revoke, check a decision.
    #[command(subcommand)]
    Grants(govern_cli::GrantsCmd),
    /// Print the gateway's route table (method, path, roles admitted) as JSON.
    Routes,
    /// Synthesize a corpus, then de-identify, encrypt and store it, and say what happened.
    Demo {
        #[command(flatten)]
        data: DataArgs,
        /// Patients to synthesize.
        #[arg(long, default_value_t = 12)]
        patients: usize,
        /// Sites to spread them over.
        #[arg(long, default_value_t = 3)]
        sites: usize,
    },
    /// De-identify, encrypt and store a site's folder of DICOM files (and clinical CSV).
    Ingest {
        #[command(flatten)]
        data: DataArgs,
        /// The contributing site's code.
        #[arg(long)]
        site: String,
        /// Folder of identifiable DICOM files.
        #[arg(long = "in")]
        input: PathBuf,
        /// The site's clinical-record CSV (see vault::clinical for the columns).
        #[arg(long)]
        clinical: Option<PathBuf>,
        /// Extra CSV columns the site declares free of identifying values.
        #[arg(long, value_delimiter = ',')]
        safe_columns: Vec<String>,
        /// Instances processed at once (more hide the disk's flush latency).
        #[arg(long, default_value_t = 16)]
        jobs: usize,
    },
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
    /// Write a synthetic, identifiable corpus (three vendors, mpMRI, SEG, clinical CSV).
    Synth {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Number of patients.
        #[arg(long, default_value_t = 10)]
        patients: usize,
        /// Number of sites.
        #[arg(long, default_value_t = 3)]
        sites: usize,
        /// Seed (same seed, same corpus).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Slices per series.
        #[arg(long, default_value_t = 4)]
        slices: usize,
    },
    /// Measure the vault beside its bound and its peers; writes a Markdown report.
    Bench {
        /// Patients in the synthetic corpus.
        #[arg(long, default_value_t = 40)]
        patients: usize,
        /// Slices per series.
        #[arg(long, default_value_t = 12)]
        slices: usize,
        /// Instances stored at once (full path and bound alike).
        #[arg(long, default_value_t = 16)]
        jobs: usize,
        /// Scratch folder (corpus, outputs; identifiable synthetic data, removed after).
        #[arg(long, default_value = "target/bench-work")]
        work: PathBuf,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        report: PathBuf,
        /// Python with dicognito installed, to run it as a peer.
        #[arg(long, env = "HBS_PYTHON")]
        python: Option<PathBuf>,
        /// Only the STOW-RS figure for CLIENTSxPER_REQUEST (for example `8x4`), printed,
        /// the report left unchanged.
        #[arg(long, value_name = "CLIENTSxPER_REQUEST")]
        stow_only: Option<String>,
    },
    /// Operator commands on the stored data.
    #[command(subcommand)]
    Vault(VaultCmd),
    /// The platform PKI: issue and revoke certificates.
    #[command(subcommand)]
    Ca(CaCmd),
    /// The audit log: verify it, list its events.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// The policy's own operator commands.
    #[command(subcommand)]
    Policy(PolicyCmd),
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Measure decision latency with many grants in force; updates BENCHMARKS.md.
    Bench {
        /// Scratch folder.
        #[arg(long, default_value = "target/policy-bench")]
        work: PathBuf,
        /// Also measure on this PostgreSQL (a fresh database is created in it).
        #[arg(long)]
        pg: Option<String>,
        /// Grant counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
        grants: Vec<usize>,
        /// The report to update.
        #[arg(long, default_value = "BENCHMARKS.md")]
        report: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Verify the log: offline from the data folder, or (with --checkpoint) a checkpoint
    /// kept earlier against the gateway. Exits 0 only when everything checks.
    Verify {
        #[command(flatten)]
        data: DataArgs,
        /// A checkpoint kept earlier (created on first contact, then kept up to date):
        /// checks that the gateway's log extends it.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// The audit verifier key [default: DATA/audit/key.pub offline; the gateway's
        /// /audit/key online, which must verify the kept checkpoint].
        #[arg(long)]
        audit_key: Option<PathBuf>,
        /// The gateway (with --checkpoint).
        #[arg(long, env = "HBS_GATEWAY", default_value = "https://127.0.0.1:8443")]
        gateway: String,
        /// Your certificate (with --checkpoint).
        #[arg(long, env = "HBS_CERT")]
        cert: Option<PathBuf>,
        /// Its key (with --checkpoint).
        #[arg(long, env = "HBS_KEY")]
        key: Option<PathBuf>,
        /// The platform CA (with --checkpoint).
        #[arg(long, env = "HBS_CA")]
        ca: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Measure appends (1, 16, 64 writers), proofs and verification; writes its section
    /// of BENCHMARKS.md.
    Bench {
        /// Scratch folder.
        #[arg(long, default_value = "target/audit-bench")]
        work: PathBuf,
        /// Also measure appends on this PostgreSQL (a fresh database is created in it).
        #[arg(long)]
        pg: Option<String>,
        /// Also measure proofs at this log size (beyond the 1 million always measured).
        #[arg(long, default_value_t = 0)]
        big: u64,
        /// The report to update.
        #[arg(long, default_value = "BENCHMARKS.md")]
        report: PathBuf,
    },
    /// List events (auditors), each inclusion proof checked against the signed checkpoint.
    Events {
        #[command(flatten)]
        client: client::ClientArgs,
        /// Actor role.
        #[arg(long)]
        role: Option<String>,
        /// Actor site.
        #[arg(long)]
        site: Option<String>,
        /// Actor name.
        #[arg(long)]
        name: Option<String>,
        /// Action (for example "contribution.instance").
        #[arg(long)]
        action: Option<String>,
        /// Resource.
        #[arg(long)]
        resource: Option<String>,
        /// allow or deny.
        #[arg(long)]
        decision: Option<String>,
        /// From (ms since the epoch).
        #[arg(long)]
        from: Option<u64>,
        /// Until (ms since the epoch).
        #[arg(long)]
        to: Option<u64>,
        /// After this event number (to page on).
        #[arg(long)]
        after: Option<u64>,
        /// At most this many (1000 at most).
        #[arg(long)]
        limit: Option<u64>,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Create the platform CA under DATA/ca (idempotent; `hbs init` does it too).
    Init {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Issue a client certificate: writes OUT/cert.pem, OUT/key.pem (0600), OUT/ca.pem.
    Issue {
        #[command(flatten)]
        data: DataArgs,
        /// data-provider, researcher, ethics-board, auditor, operator or compute.
        #[arg(long)]
        role: String,
        /// The holder's name (a login).
        #[arg(long)]
        name: String,
        /// The holder's site (required for data providers).
        #[arg(long)]
        site: Option<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 90)]
        days: u32,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke a certificate (by its file or serial) and rewrite the CRL.
    Revoke {
        #[command(flatten)]
        data: DataArgs,
        /// The certificate file (PEM).
        #[arg(long, conflicts_with = "serial", required_unless_present = "serial")]
        cert: Option<PathBuf>,
        /// The certificate's serial number (hex).
        #[arg(long)]
        serial: Option<String>,
        /// Why (kept in the revocation list).
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
}

/// `hbs job`.
#[derive(Subcommand)]
enum JobCmd {
    /// Queue a job for an approved service request of yours; prints its ID.
    Submit {
        #[command(flatten)]
        client: client::ClientArgs,
        /// The service request.
        #[arg(long)]
        request: String,
        /// Parameters (JSON object, for example {"threshold": 0.5}).
        #[arg(long)]
        params: Option<PathBuf>,
    },
    /// Ethics board: approve releasing a fine-tuning job's trained weights (a quorum of
    /// two; they still leave only if disclosure control lets them).
    Release {
        #[command(flatten)]
        client: client::ClientArgs,
        /// The job ID.
        id: String,
    },
    /// A job's status, reason and released outputs.
    Show {
        #[command(flatten)]
        client: client::ClientArgs,
        /// The job ID.
        id: String,
    },
}

/// `hbs enclave`.
#[derive(Subcommand)]
enum EnclaveCmd {
    /// Check that this host can sandbox jobs, and measure the sandbox's start-up.
    Check {
        /// Start this many empty workers to time start-up.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Measure inference throughput against onnxruntime, and the sandbox's start-up;
    /// updates BENCHMARKS.md.
    Bench {
        /// Studies per model.
        #[arg(long, default_value_t = 200)]
        studies: usize,
        /// Slices per study.
        #[arg(long, default_value_t = 24)]
        slices: usize,
        /// Python with onnxruntime.
        #[arg(long, default_value = ".venv/bin/python")]
        python: PathBuf,
        /// The report to update.
        #[arg(long, default_value = "BENCHMARKS.md")]
        report: PathBuf,
    },
    /// Run an escape attempt in the sandbox a job gets, and report what happened
    /// (tcp, dns, read, write, write-out, exec, fork-bomb, alloc, loop, output, ptrace).
    Probe {
        /// The attempt.
        attempt: String,
        /// Its argument (an address, a path).
        #[arg(long, default_value = "")]
        arg: String,
        /// Wall-clock limit, seconds.
        #[arg(long, default_value_t = 10)]
        wall_seconds: u64,
        /// Memory limit, MiB.
        #[arg(long, default_value_t = 256)]
        memory_mib: u64,
        /// CPU limit, seconds.
        #[arg(long, default_value_t = 30)]
        cpu_seconds: u64,
        /// Output cap, bytes.
        #[arg(long, default_value_t = 1 << 20)]
        output_bytes: u64,
    },
}

#[derive(Subcommand)]
enum VaultCmd {
    /// Decrypt one patient's instances and clinical records, or all, into a folder.
    Export {
        #[command(flatten)]
        data: DataArgs,
        /// The patient's pseudonym (PN-...); all patients when absent.
        #[arg(long)]
        patient: Option<String>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Consent withdrawn: destroy the patient's data key and catalogue rows.
    Withdraw {
        #[command(flatten)]
        data: DataArgs,
        /// The patient's pseudonym (PN-...).
        #[arg(long)]
        patient: String,
    },
    /// Rotate the key-encryption key (rewraps data keys; blobs untouched).
    RotateKek {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Counts of what the vault holds.
    Stats {
        #[command(flatten)]
        data: DataArgs,
    },
}

fn main() -> std::process::ExitCode {
    // The sandboxed worker confines itself before anything else runs: no runtime, no
    // logger, no thread (see compute::sandbox).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("enclave-worker") {
        let code = compute::worker::main(&args[2..]);
        return std::process::ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HBS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hbs: error: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = rt.block_on(run(cli));
    if std::env::var_os("HBS_PRINT_PEAK_RSS").is_some() {
        if let Some(mb) = bench::peak_rss_mb() {
            eprintln!("peak_rss_mb={mb:.1}");
        }
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hbs: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Init { data } => cli::init(&data.config()?).await,
        Cmd::Contribute {
            client,
            batch,
            state,
            receipts,
            dir,
        } => contribute::contribute(&client, &dir, batch, &state, &receipts).await,
        Cmd::Whoami { client } => search::whoami(&client).await,
        Cmd::Request(cmd) => govern_cli::request(cmd).await,
        Cmd::Policy(PolicyCmd::Bench {
            work,
            pg,
            grants,
            report,
        }) => {
            let r = policy_bench::run(&work, pg, &grants, &report).await;
            let _ = std::fs::remove_dir_all(&work);
            r
        }
        Cmd::Review(cmd) => govern_cli::review(cmd).await,
        Cmd::Grants(cmd) => govern_cli::grants(cmd).await,
        Cmd::Kpi { client } => catalogue::kpi_cmd(&client).await,
        Cmd::Enclave(EnclaveCmd::Check { runs, json }) => enclave::check(runs, json),
        Cmd::Enclave(EnclaveCmd::Bench {
            studies,
            slices,
            python,
            report,
        }) => enclave::bench(studies, slices, &python, &report),
        Cmd::Job(JobCmd::Submit {
            client,
            request,
            params,
        }) => jobs::submit_cmd(&client, &request, params.as_deref()).await,
        Cmd::Job(JobCmd::Show { client, id }) => jobs::show_cmd(&client, &id).await,
        Cmd::Job(JobCmd::Release { client, id }) => jobs::release_cmd(&client, &id).await,
        Cmd::Models {
            client,
            add: Some(file),
            card: Some(card),
        } => jobs::register_cmd(&client, &file, &card).await,
        Cmd::Models { client, .. } => jobs::models_cmd(&client).await,
        Cmd::Enclave(EnclaveCmd::Probe {
            attempt,
            arg,
            wall_seconds,
            memory_mib,
            cpu_seconds,
            output_bytes,
        }) => enclave::probe(
            &attempt,
            &arg,
            compute::sandbox::Limits {
                memory_bytes: memory_mib << 20,
                wall_seconds,
                cpu_seconds,
                output_bytes,
                ..Default::default()
            },
        ),
        Cmd::Cohort(CohortCmd::Count { client, cohort, by }) => {
            catalogue::count_cmd(&client, cohort.as_deref(), &by).await
        }
        Cmd::Cohort(CohortCmd::Bench {
            work,
            pg,
            patients,
            instances,
            report,
        }) => {
            let r = cohort_bench::run(&work, pg, patients, instances, &report).await;
            let _ = std::fs::remove_dir_all(&work);
            r
        }
        Cmd::Search {
            client,
            level,
            study,
            series,
            limit,
            offset,
            filters,
            grant,
            purpose,
        } => {
            let q = search::Query {
                grant: grant.zip(purpose),
                level,
                study,
                series,
                limit,
                offset,
                filters,
            };
            search::search(&client, &q).await
        }
        Cmd::Routes => {
            let table: Vec<_> = routes::ROUTES
                .iter()
                .map(|(m, p, roles)| {
                    serde_json::json!({"method": m, "path": p,
                        "roles": roles.iter().map(|r| r.as_str()).collect::<Vec<_>>()})
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&table)?);
            Ok(())
        }
        Cmd::Serve {
            data,
            listen,
            signed_only_sites,
        } => {
            let cfg = data.config()?;
            let listen = data.listen(listen)?;
            let signed_only = data.signed_only_sites(signed_only_sites)?;
            cli::init(&cfg).await?;
            // One write lock for the two writers of the database (vault and audit log).
            let write_lock = vault::catalog::WriteLock::default();
            let vault = vault::vault::Vault::open_with(&cfg, Some(write_lock.clone())).await?;
            let audit = audit::AuditLog::open_shared(
                &cfg.database_url(),
                &cfg.data_dir.join("audit"),
                write_lock.clone(),
            )
            .await
            .context("the audit log")?;
            record::attach(&vault, &audit);
            // The policy decides every call; a decider that would not enforce stops here.
            let policy = governance::open(&cfg.database_url(), Some(write_lock), &audit)
                .await
                .context("the policy")?;
            let key_path = cfg.data_dir.join("tls/key.pem");
            let key = std::fs::read(&key_path)
                .with_context(|| format!("cannot read {}", key_path.display()))?;
            let catalogue = std::sync::Arc::new(
                catalogue::Catalogue::new(vault.pseudonymizer(), &data.catalogue()?)
                    .context("the catalogue")?,
            );
            let jobs = jobs::Jobs::open(policy.store().pool().clone(), &cfg.data_dir)
                .await
                .context("the job queue")?;
            let state = routes::AppState {
                jobs,
                catalogue,
                vault,
                metrics: Default::default(),
                receipt_key: std::sync::Arc::new(openssl::pkey::PKey::private_key_from_pem(&key)?),
                signed_only: std::sync::Arc::new(signed_only),
                audit,
                policy,
            };
            // Concurrent jobs: HBS_JOB_WORKERS, default one per core (0: queue only).
            let workers = match std::env::var("HBS_JOB_WORKERS") {
                Ok(v) => v
                    .parse::<usize>()
                    .context("HBS_JOB_WORKERS must be a number of workers")?,
                Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
            };
            jobs::start_runners(state.clone(), workers);
            server::serve(state, cfg.data_dir.clone(), listen).await
        }
        Cmd::Demo {
            data,
            patients,
            sites,
        } => cli::demo(&data.config()?, patients, sites).await,
        Cmd::Ingest {
            data,
            site,
            input,
            clinical,
            safe_columns,
            jobs,
        } => {
            cli::ingest(
                &data.config()?,
                &site,
                &input,
                clinical.as_deref(),
                &safe_columns,
                jobs,
            )
            .await
        }
        Cmd::Deid {
            site,
            key_file,
            input,
            output,
        } => cli::deid(&site, &key_file, &input, &output),
        Cmd::Synth {
            out,
            patients,
            sites,
            seed,
            slices,
        } => cli::synth(&out, patients, sites, seed, slices),
        Cmd::Bench {
            patients,
            slices,
            jobs,
            work,
            report,
            python,
            stow_only,
        } => {
            let r = match stow_only {
                Some(shape) => bench::stow_only(patients, slices, &work, &shape).await,
                None => bench::run(patients, slices, jobs, &work, &report, python).await,
            };
            let _ = std::fs::remove_dir_all(&work);
            r
        }
        Cmd::Vault(VaultCmd::Export { data, patient, out }) => {
            cli::export(&data.config()?, patient.as_deref(), &out).await
        }
        Cmd::Vault(VaultCmd::Withdraw { data, patient }) => {
            cli::withdraw(&data.config()?, &patient).await
        }
        Cmd::Vault(VaultCmd::RotateKek { data }) => cli::rotate_kek(&data.config()?).await,
        Cmd::Vault(VaultCmd::Stats { data }) => cli::stats(&data.config()?).await,
        Cmd::Audit(AuditCmd::Verify {
            data,
            checkpoint,
            audit_key,
            gateway,
            cert,
            key,
            ca,
            json,
        }) => match checkpoint {
            None => audit_cli::verify_offline(&data.config()?, audit_key.as_deref(), json).await,
            Some(kept) => {
                let (Some(cert), Some(key), Some(ca)) = (cert, key, ca) else {
                    anyhow::bail!(
                        "--checkpoint needs --cert, --key and --ca (or HBS_CERT, HBS_KEY, HBS_CA)"
                    );
                };
                let c = client::ClientArgs {
                    gateway,
                    cert,
                    key,
                    ca,
                    json,
                };
                audit_cli::verify_online(&c, &kept, audit_key.as_deref()).await
            }
        },
        Cmd::Audit(AuditCmd::Bench {
            work,
            pg,
            big,
            report,
        }) => {
            let r = audit_bench::run(&work, pg, big, &report).await;
            let _ = std::fs::remove_dir_all(&work);
            r
        }
        Cmd::Audit(AuditCmd::Events {
            client,
            role,
            site,
            name,
            action,
            resource,
            decision,
            from,
            to,
            after,
            limit,
        }) => {
            let mut pairs: Vec<(&'static str, String)> = Vec::new();
            for (k, v) in [
                ("role", role),
                ("site", site),
                ("name", name),
                ("action", action),
                ("resource", resource),
                ("decision", decision),
            ] {
                if let Some(v) = v {
                    pairs.push((k, v));
                }
            }
            for (k, v) in [
                ("from", from),
                ("to", to),
                ("after", after),
                ("limit", limit),
            ] {
                if let Some(v) = v {
                    pairs.push((k, v.to_string()));
                }
            }
            audit_cli::events(&client, &audit_cli::EventFilters { pairs }).await
        }
        Cmd::Ca(CaCmd::Init { data }) => cli::ca_init(&data.data_dir()?),
        Cmd::Ca(CaCmd::Issue {
            data,
            role,
            name,
            site,
            days,
            out,
        }) => {
            cli::record_local(
                &data.config()?,
                "ca.issue",
                &format!(
                    "{role} certificate for {name}{}",
                    site.as_deref()
                        .map(|s| format!(" at {s}"))
                        .unwrap_or_default()
                ),
            )
            .await?;
            cli::ca_issue(&data.data_dir()?, &role, &name, site.as_deref(), days, &out)
        }
        Cmd::Ca(CaCmd::Revoke {
            data,
            cert,
            serial,
            reason,
        }) => {
            cli::record_local(
                &data.config()?,
                "ca.revoke",
                &format!(
                    "certificate {}",
                    serial.as_deref().unwrap_or("given by file")
                ),
            )
            .await?;
            cli::ca_revoke(
                &data.data_dir()?,
                cert.as_deref(),
                serial.as_deref(),
                &reason,
            )
        }
    }
}
