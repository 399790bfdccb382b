//! Derivative-free optimisation.
