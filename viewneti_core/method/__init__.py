"""The method: view and object mappers, text conditioning, XTI attention, the assembled ViewNeTI model, the sampler and its acceleration."""
