//! Output format of the commands that print results.

/// `-o text` (default, for people) or `-o json` (for scripts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum Output {
    /// Readable text.
    #[default]
    Text,
    /// JSON (one document, or one per line for streams).
    Json,
}
