//! Small dense linear algebra.
