"""Image input: decoding untrusted bytes, the face stage, region geometry, processing."""
