"""GCG model adapters (tiny_gcg, glamm, omg_llava): image -> embedded prompt -> engine -> caption + masks."""
