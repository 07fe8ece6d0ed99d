"""invoice_zh: Chinese invoice texts with nested fields and money; its generator and rule baseline."""
