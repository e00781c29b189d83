//! `maas-worker`: runs models for the scheduler.

use clap::Parser;
use maas_worker::{Worker, WorkerSettings};

#[derive(Parser)]
#[command(
    name = "maas-worker",
    version,
    about = "Model worker of the model-serving platform (actix actors)"
)]
struct Cli {
    #[command(flatten)]
    settings: WorkerSettings,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    maas_core::telemetry::init("maas-worker", cli.settings.common.log_format);
    let worker = Worker::build(cli.settings).await?;
    println!("maas-worker listening on port {}", worker.port());
    tracing::info!(
        port = worker.port(),
        worker_id = worker.worker_id(),
        "maas-worker health endpoints up"
    );
    let result = worker.run_until_stopped().await;
    // Spans still buffered go out before the process ends.
    maas_core::telemetry::shutdown();
    result
}
