"""The conformance kit any backend runs: pytest models/conformance --backend NAME --target_model M."""
