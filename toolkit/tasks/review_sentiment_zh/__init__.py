"""review_sentiment_zh: positive or negative shopping reviews; its generator."""
