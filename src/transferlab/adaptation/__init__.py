"""Unsupervised domain adaptation: losses that pull unlabelled target features toward the
labelled source's (`adapt=dann|cdan|mcc|mmd`). Each method is a DomainAdaptation module
(base.py), built with its options and the sizes the code fills in (`feature_dim`,
`num_classes`); the training step adds `weight` times what its forward returns, computed on
a source batch and a target batch whose labels it never sees. DANN and CDAN own a domain
discriminator that trains with the network (the optimizer must include the module's
parameters); MCC and MMD have no parameters.
"""
