"""Benchmarks that drive the product only through its public interface: console scripts, environment, HTTP."""
