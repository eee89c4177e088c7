//! Typed errors of recblocks-core. Every variant says where, what was found and what was expected.

use crate::kind::ComponentKind;

/// Result alias used across core and plugins.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Everything that can go wrong while resolving a spec or building and running components.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A type name that no registered component of that kind answers to.
    #[error("unknown {kind} `{name}`{}; known {kind} names: {}", .suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default(), .known.join(", "))]
    UnknownComponent {
        /// The component kind that was looked up.
        kind: ComponentKind,
        /// The name as written by the user.
        name: String,
        /// The canonical names registered for that kind, sorted.
        known: Vec<String>,
        /// The closest known name, if any is close.
        suggestion: Option<String>,
    },
    /// Kwargs that do not decode into the component's kwargs struct.
    #[error("bad kwargs for {kind} `{component}`: {message}")]
    BadKwargs {
        /// The component kind.
        kind: ComponentKind,
        /// The component's canonical name.
        component: String,
        /// What serde or the component said (names the field and what was expected).
        message: String,
    },
    /// Two registrations claim the same name (or alias) for the same kind.
    #[error("duplicate {kind} name `{name}`: registered by crate `{first_crate}` and again by crate `{second_crate}`")]
    DuplicateRegistration {
        /// The component kind.
        kind: ComponentKind,
        /// The clashing name.
        name: String,
        /// The crate that registered it first.
        first_crate: String,
        /// The crate that registered it again.
        second_crate: String,
    },
    /// A spec that is not valid JSON or does not follow the schema.
    #[error("spec: {0}")]
    Spec(String),
    /// A component rejected its configuration (sizes, combinations of settings).
    #[error("{kind} `{component}`: {message}")]
    InvalidConfig {
        /// The component kind.
        kind: ComponentKind,
        /// The component's canonical name.
        component: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A component of a plugin library panicked; the host caught the panic at the call into the
    /// plugin. The component's state is not trusted afterwards. Boxed, so that every `Result` of
    /// core stays small.
    #[error("plugin {}: {} `{}` panicked in `{}`: {}", .0.library, .0.kind, .0.component, .0.call, .0.message)]
    PluginPanicked(Box<PluginPanicInfo>),
    /// Anything else, with a message that says what and where.
    #[error("{0}")]
    Other(String),
}

/// Where a plugin's panic happened, and its message ([`CoreError::PluginPanicked`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginPanicInfo {
    /// The plugin library file.
    pub library: String,
    /// The component kind.
    pub kind: ComponentKind,
    /// The component's canonical name.
    pub component: String,
    /// The call that panicked (`build`, `forward_t`, ...).
    pub call: String,
    /// The panic's message.
    pub message: String,
}

impl CoreError {
    /// Shorthand for [`CoreError::InvalidConfig`].
    pub fn invalid(kind: ComponentKind, component: &str, message: impl Into<String>) -> Self {
        CoreError::InvalidConfig {
            kind,
            component: component.to_string(),
            message: message.into(),
        }
    }
}
