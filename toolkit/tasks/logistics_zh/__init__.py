"""logistics_zh: messy Chinese shipping strings; its generator and rule baseline."""
