"""Target-model backends: the interface the engine talks to, and the runtimes behind it."""
