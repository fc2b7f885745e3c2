"""Task definitions: catalog resolution plus the scientific task pieces (lawbench, trimul, denoise)."""
