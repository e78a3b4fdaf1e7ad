import Foundation
import Numerics
import ReferenceModel

/// Drift measures between a reference and a candidate forward pass (all reductions in f64).
public enum DriftMetrics {
    /// ‖c − r‖ / ‖r‖ over all elements.
    public static func relativeError(reference r: [Float], candidate c: [Float]) -> Double {
        var num = 0.0, den = 0.0
        for i in 0..<r.count {
            let d = Double(c[i]) - Double(r[i])
            num += d * d
            den += Double(r[i]) * Double(r[i])
        }
        return den == 0 ? (num == 0 ? 0 : .infinity) : (num / den).squareRoot()
    }

    /// Cosine similarity of each row of width `width`: (mean, min).
    public static func rowCosines(reference r: [Float], candidate c: [Float], width: Int) -> (mean: Double, min: Double) {
        let rows = r.count / width
        var total = 0.0, lowest = 1.0
        for row in 0..<rows {
            var dot = 0.0, nr = 0.0, nc = 0.0
            for j in 0..<width {
                let a = Double(r[row * width + j]), b = Double(c[row * width + j])
                dot += a * b; nr += a * a; nc += b * b
            }
            let cosine = nr == 0 || nc == 0 ? (nr == nc ? 1 : 0) : dot / (nr.squareRoot() * nc.squareRoot())
            total += cosine
            lowest = min(lowest, cosine)
        }
        return (rows == 0 ? 1 : total / Double(rows), lowest)
    }

    public static func maxAbsDifference(_ a: [Float], _ b: [Float]) -> Double {
        var m = 0.0
        for i in 0..<a.count { m = max(m, abs(Double(a[i]) - Double(b[i]))) }
        return m
    }

    /// log-softmax of one row in f64.
    static func logSoftmax(_ row: ArraySlice<Float>) -> [Double] {
        let m = Double(row.max() ?? 0)
        var sum = 0.0
        for v in row { sum += Foundation.exp(Double(v) - m) }
        let lse = m + Foundation.log(sum)
        return row.map { Double($0) - lse }
    }

    /// Per-token KL(reference ‖ candidate) in nats, and whether the top-1 tokens agree. Rows run on
    /// every core (V3's 129,280-entry rows: two log-softmaxes in f64 per token); each row's sum is
    /// its own, so the figures do not depend on the thread count.
    public static func klAndTop1(reference r: [Float], candidate c: [Float], vocab: Int) -> (kl: [Double], top1: [Bool]) {
        let rows = vocab == 0 ? 0 : r.count / vocab
        guard rows > 0 else { return ([], []) }
        var kl = [Double](repeating: 0, count: rows), agree = [Bool](repeating: false, count: rows)
        kl.withUnsafeMutableBufferPointer { klp in agree.withUnsafeMutableBufferPointer { ap in
            let klOut = SharedPointer(klp.baseAddress!), agreeOut = SharedPointer(ap.baseAddress!)
            Parallel.forEach(rows) { row in
                let range = (row * vocab)..<((row + 1) * vocab)
                let lp = logSoftmax(r[range]), lq = logSoftmax(c[range])
                var d = 0.0
                for j in 0..<vocab { d += Foundation.exp(lp[j]) * (lp[j] - lq[j]) }
                klOut.pointer[row] = max(d, 0)
                agreeOut.pointer[row] = argmax(r[range]) == argmax(c[range])
            }
        } }
        return (kl, agree)
    }

    static func argmax(_ row: ArraySlice<Float>) -> Int {
        var best = row.startIndex
        for i in row.indices where row[i] > row[best] { best = i }
        return best - row.startIndex
    }

    /// Perplexity of next-token prediction: exp(mean −log p(token[i+1] | ≤ i)) over every sequence.
    /// The `q` quantile of `values` by nearest rank (the smallest value at or above a share q of
    /// them); 0 for no values.
    public static func percentile(_ values: [Double], _ q: Double) -> Double {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        let rank = Int((q * Double(sorted.count)).rounded(.up))
        return sorted[min(max(rank, 1), sorted.count) - 1]
    }

    public static func perplexity(logits: [Float], tokens: [[Int]], vocab: Int) -> Double {
        var nll = 0.0, count = 0
        let seq = tokens[0].count
        for (b, sequence) in tokens.enumerated() {
            for i in 0..<(seq - 1) {
                let row = (b * seq + i) * vocab
                let lp = logSoftmax(logits[row..<(row + vocab)])
                nll -= lp[sequence[i + 1]]
                count += 1
            }
        }
        return count == 0 ? .nan : Foundation.exp(nll / Double(count))
    }

    /// Share of (token, expert) selections of the reference that the candidate also made.
    public static func routingAgreement(reference r: RoutingRecord, candidate c: RoutingRecord) -> Double {
        let tokens = r.experts.count / max(r.k, 1)
        var kept = 0
        for i in 0..<tokens {
            let a = Set(r.experts[(i * r.k)..<((i + 1) * r.k)])
            let b = Set(c.experts[(i * c.k)..<((i + 1) * c.k)])
            kept += a.intersection(b).count
        }
        return r.experts.isEmpty ? 1 : Double(kept) / Double(r.experts.count)
    }
}
