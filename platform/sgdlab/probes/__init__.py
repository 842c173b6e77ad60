"""Hessian probes (torch, numpy and scipy only).

hvp        curvature operators: full-data Hessian, mini-batch Hessian, Gauss-Newton; flat parameter layout
lanczos    top-k eigenpairs by Lanczos with full reorthogonalization
trace      Hutchinson and Hutch++ trace estimates with standard errors
density    stochastic Lanczos quadrature: spectral density and moments
blocks     per-parameter-block trace and top eigenvalue
batch      mini-batch versus full-data sharpness, batch sharpness
reference  dense float64 ground truth for tiny models
distributed  the full-data operator of data sharded across torch.distributed ranks (products all-reduced)
curvlinops_adapter  curvlinops' Hessian as a scipy LinearOperator (the only module that imports curvlinops;
                    a reference for tests and benchmarks: curvlinops is in the test and bench extras)
"""
