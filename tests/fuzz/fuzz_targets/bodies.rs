//! The control plane's request bodies, any bytes at all: the admin API's key, allocation,
//! budget and operator requests, and the ledger's usage batch and authorize request. None may panic; each
//! is parsed or refused with a message, and a batch's refusal names a record inside it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_engine::UnixMs;
use tollgate_gateway::control::bodies::{
    KeyRequest, allocation_request, limit_request, operator_request,
};
use tollgate_gateway::http::error::Failure;
use tollgate_gateway::usage::bodies::{AuthorizeRequest, BatchRequest};

const RECORDS_MAX: usize = 64;

fuzz_target!(|data: &[u8]| {
    let now = UnixMs(1_764_000_000_000);
    told(KeyRequest::parse(data, now).err());
    told(allocation_request(data).err());
    told(limit_request(data).err());
    told(operator_request(data, now).err());
    told(AuthorizeRequest::parse(data).err());
    match BatchRequest::parse(data, RECORDS_MAX) {
        Ok(batch) => assert!(batch.records.len() <= RECORDS_MAX),
        Err(Failure::BadRecord {
            index,
            field,
            reason,
        }) => {
            assert!(index < RECORDS_MAX && !field.is_empty() && !reason.is_empty());
        }
        Err(other) => told(Some(other)),
    }
});

fn told(failure: Option<Failure>) {
    if let Some(failure) = failure {
        assert!(
            !failure.to_string().is_empty(),
            "refused without a word: {failure:?}"
        );
    }
}
