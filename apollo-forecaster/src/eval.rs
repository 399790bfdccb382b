//! Rolling-origin backtest harness on real traces (`apolloctl eval forecast`).
