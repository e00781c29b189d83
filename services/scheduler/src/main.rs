//! `maas-scheduler`: fair-share dispatch of jobs to workers.

use clap::Parser;
use maas_scheduler::{Scheduler, SchedulerSettings};

#[derive(Parser)]
#[command(
    name = "maas-scheduler",
    version,
    about = "Fair-share job scheduler of the model-serving platform"
)]
struct Cli {
    #[command(flatten)]
    settings: SchedulerSettings,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    maas_core::telemetry::init("maas-scheduler", cli.settings.common.log_format);
    let scheduler = Scheduler::build(cli.settings).await?;
    println!("maas-scheduler listening on port {}", scheduler.port());
    tracing::info!(
        port = scheduler.port(),
        "maas-scheduler health endpoints up"
    );
    let result = scheduler.run_until_stopped().await;
    // Spans still buffered go out before the process ends.
    maas_core::telemetry::shutdown();
    result
}
