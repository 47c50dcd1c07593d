//! YAML as the Kubernetes toolchain reads it, edited without loss: a
//! document is parsed into a tree of nodes that know their place in the
//! text ([`tree`]), its scalars read by go-yaml v2's YAML 1.1 rules
//! ([`resolve`]), and a changed value written back by splicing the text
//! ([`splice`]), so that comments, quoting, anchors and formatting around
//! what changed stay byte for byte.

pub(crate) mod resolve;
pub(crate) mod splice;
pub(crate) mod tree;

pub(crate) use splice::splice;
pub use tree::ParseError;
pub(crate) use tree::parse;

#[cfg(test)]
mod tests;
