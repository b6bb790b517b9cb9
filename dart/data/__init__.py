"""Real text available offline (gensim's test data) and the hub data sets users have elsewhere."""
