//! The one error type of the memory crate (besides [`crate::SizeError`]).

use std::io;

use thiserror::Error;

use crate::config::BackendKind;

/// Why a backend could not be configured or created.
///
/// Every message names the backend (type and id), the option involved and the reason.
#[derive(Debug, Error)]
pub enum Error {
    /// An option value or a combination of options is not accepted.
    #[error("{kind} backend '{id}': {reason}")]
    Invalid {
        /// Backend type.
        kind: BackendKind,
        /// Backend id.
        id: String,
        /// The option at fault (the first one, for a combination).
        option: String,
        /// Why, in words that name the option.
        reason: String,
    },
    /// The host refused a step of creating the backend.
    #[error("{kind} backend '{id}': {option}: {op}: {source}")]
    Os {
        /// Backend type.
        kind: BackendKind,
        /// Backend id.
        id: String,
        /// The option this step serves (e.g. `mem-path`, `prealloc`).
        option: String,
        /// The step that failed, with the object it acted on.
        op: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The option this error is about, when there is one.
    pub fn option(&self) -> Option<&str> {
        match self {
            Error::Invalid { option, .. } | Error::Os { option, .. } => Some(option),
        }
    }
}
