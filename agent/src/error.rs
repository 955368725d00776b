//! Typed errors of the engine seam, each with a retryable / fatal meaning.

/// What went wrong talking to the container engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The object (container, image, network) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A container with this name exists and belongs to another task (or to
    /// nobody we know): reported, never adopted.
    #[error("name conflict: {0}")]
    Conflict(String),
    /// The image is not on the host and could not be pulled.
    #[error("image not found: {0}")]
    ImageNotFound(String),
    /// The engine refused the request as invalid (e.g. a bad mount): retrying
    /// the same request fails the same way.
    #[error("refused by the engine: {0}")]
    Rejected(String),
    /// The engine could not be reached, timed out, or is shutting down.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// Any other engine error (a 5xx, an unexpected answer).
    #[error("engine error: {0}")]
    Other(String),
}

impl EngineError {
    /// True when the same call may succeed later without any change (the
    /// engine was down or busy); false when the request itself is wrong.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::Other(_) | Self::ImageNotFound(_)
        )
    }
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Connecting to the engine failed for good (e.g. a malformed address).
    #[error("connecting to the engine: {0}")]
    Connect(String),
    /// An assignments file could not be read or is invalid.
    #[error("assignments: {0}")]
    Assignments(String),
}

impl AgentError {
    /// Both kinds need a change by a person before a retry can help.
    pub fn is_retryable(&self) -> bool {
        false
    }
}
