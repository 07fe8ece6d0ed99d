"""logistics_zh: messy Chinese shipping strings; its generator, rule baseline and admin-division resolver."""
