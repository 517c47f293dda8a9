//! gRPC reflection (v1 and v1alpha), built when first asked. Building it
//! decodes the API's whole descriptor set into a pool the service keeps for
//! the agent's life: about 100 KiB of heap per version, paid at every start
//! by agents that are, nearly all of them, never asked.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::server::NamedService;
use tonic_reflection::server::{Builder, Error};
use tower::Service;

type Response = http::Response<Body>;
type Reply = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// A reflection service of version `S`, made by `make` at the first call.
pub(crate) struct Lazy<S> {
    make: fn() -> Result<S, Error>,
    built: Arc<OnceLock<Result<S, String>>>,
}

impl<S> Clone for Lazy<S> {
    fn clone(&self) -> Self {
        Lazy { make: self.make, built: self.built.clone() }
    }
}

fn builder() -> Builder<'static> {
    Builder::configure().register_encoded_file_descriptor_set(netdb_api::FILE_DESCRIPTOR_SET)
}

/// grpcurl, grpcio's reflection client and Postman ask v1.
pub(crate) fn v1() -> Lazy<impl ReflectionService> {
    Lazy { make: || builder().build_v1(), built: Arc::default() }
}

/// grpcio-reflection's descriptor database, older grpcurl and evans still
/// ask v1alpha.
pub(crate) fn v1alpha() -> Lazy<impl ReflectionService> {
    Lazy { make: || builder().build_v1alpha(), built: Arc::default() }
}

/// What tonic asks of a service, which both reflection versions are.
pub(crate) trait ReflectionService:
    Service<http::Request<Body>, Response = Response, Error = Infallible, Future: Send>
    + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> ReflectionService for S where
    S: Service<http::Request<Body>, Response = Response, Error = Infallible, Future: Send>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

impl<S: NamedService> NamedService for Lazy<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: ReflectionService> Service<http::Request<Body>> for Lazy<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = Reply;

    /// tonic's generated services are always ready, so the lazy one is.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Reply {
        let built = self.built.get_or_init(|| {
            (self.make)().map_err(|e| {
                tracing::error!(error = %e, "cannot build the gRPC reflection service");
                format!("gRPC reflection is unavailable: {e}")
            })
        });
        match built {
            Ok(service) => {
                let mut service = service.clone();
                Box::pin(service.call(req))
            }
            Err(why) => {
                let reply = tonic::Status::internal(why.clone()).into_http();
                Box::pin(std::future::ready(Ok(reply)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_build_from_the_embedded_descriptors() {
        // The lazy services would answer INTERNAL for ever if the embedded
        // descriptor set stopped decoding; this is where it shows.
        assert!(builder().build_v1().is_ok());
        assert!(builder().build_v1alpha().is_ok());
    }
}
