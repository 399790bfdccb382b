//! Forecasting models (baselines, ETS, ARIMA, Prophet-style, lag regression, LSTM) and `auto` selection.
