// k-means update for the cuda backend: per-centroid sums of member rows, members grouped by
// centroid (a stable order computed once), one thread per (centroid, component), Kahan
// compensated, no float atomics: deterministic. Same algorithm as shaders/kmeans_sums.comp.
extern "C" __global__ void kmeans_sums(
    const float* __restrict__ x, const long long* __restrict__ order,
    const long long* __restrict__ offsets, float* __restrict__ sums,
    unsigned int k, unsigned int d)
{
    const unsigned int c = blockIdx.x;
    const unsigned int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= k || j >= d) return;
    float s = 0.0f, comp = 0.0f;
    for (long long r = offsets[c]; r < offsets[c + 1]; ++r) {
        const float y = x[(size_t)order[r] * d + j] - comp;
        const float t = s + y;
        comp = (t - s) - y;
        s = t;
    }
    sums[(size_t)c * d + j] = s;
}
