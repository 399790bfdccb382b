//! GPU-allocation simulation on the openb trace (`apolloctl simulate`).
