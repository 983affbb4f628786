"""scikit-learn: KMeans (OpenMP inside) and RandomForestClassifier(n_jobs=2) (joblib threads)."""

import numpy as np
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs, make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

from _probe import blas_threads, openmp_threads, report

if __name__ == "__main__":
    points, _ = make_blobs(n_samples=3000, centers=4, n_features=8, random_state=0)
    report("kmeans_openmp_team", _openmp_effective_n_threads())
    kmeans = KMeans(n_clusters=4, n_init=3, random_state=0).fit(points)
    print(f"kmeans inertia {kmeans.inertia_:.6g}, cluster sizes {sorted(np.bincount(kmeans.labels_).tolist())}")
    report("openmp_after_kmeans", openmp_threads())
    report("blas_after_kmeans", blas_threads())

    x, y = make_classification(n_samples=600, n_features=12, random_state=0)
    forest = RandomForestClassifier(n_estimators=40, n_jobs=2, random_state=0).fit(x[:400], y[:400])
    print(f"forest accuracy {forest.score(x[400:], y[400:]):.4f}")
    report("openmp_after_forest", openmp_threads())
