"""Forecasting: classical and neural forecasters of panels of time series, behind one contract."""
