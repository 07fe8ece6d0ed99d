"""msra_ner: persons, locations and organisations in news sentences; its generator and jieba baseline."""
