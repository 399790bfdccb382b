//! `ForecastService` over gRPC.

use std::sync::Arc;

use apollo_proto::{
    forecast_service_server::ForecastService, ClusterPrediction, ClusterPredictionRequest,
    PredictionRequest, ResourcePrediction,
};
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::{consumer::now_ms, engine::Engine, Error};

/// The gRPC handlers; forecasts run on blocking threads.
#[derive(Debug, Clone)]
pub struct ForecastApi {
    engine: Arc<Engine>,
}

impl ForecastApi {
    /// Serves predictions of `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::from(Error::Internal(e.to_string())))?
        .map_err(Status::from)
}

#[tonic::async_trait]
impl ForecastService for ForecastApi {
    #[instrument(skip(self, request), fields(node = %request.get_ref().node_name))]
    async fn get_resource_prediction(
        &self,
        request: Request<PredictionRequest>,
    ) -> Result<Response<ResourcePrediction>, Status> {
        let r = request.into_inner();
        if r.node_name.is_empty() {
            return Err(Error::InvalidArgument("node_name is required".into()).into());
        }
        let engine = self.engine.clone();
        let p = blocking(move || {
            engine.predict(
                &r.node_name,
                r.horizon_minutes,
                r.confidence_level,
                now_ms(),
            )
        })
        .await?;
        Ok(Response::new(p))
    }

    #[instrument(skip(self, request), fields(nodes = request.get_ref().node_filters.len()))]
    async fn get_cluster_prediction(
        &self,
        request: Request<ClusterPredictionRequest>,
    ) -> Result<Response<ClusterPrediction>, Status> {
        let r = request.into_inner();
        let engine = self.engine.clone();
        let p = blocking(move || {
            engine.predict_cluster(
                r.horizon_minutes,
                r.confidence_level,
                &r.node_filters,
                now_ms(),
            )
        })
        .await?;
        Ok(Response::new(p))
    }
}
