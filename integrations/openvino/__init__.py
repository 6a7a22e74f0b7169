"""OpenVINO adapter (optimum-intel): int8 IR export with sparse-weight decompression, engine runner."""
