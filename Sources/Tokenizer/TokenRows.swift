/// Token ids cut into the equal-length rows of a tokens file (`{"tokens": [[…]]}`).
public enum TokenRows {
    /// The rows, and how many ids at the end were left out (shorter than one row).
    public struct Cut: Equatable, Sendable {
        /// The rows, each of the same length.
        public let rows: [[Int]]
        /// Ids at the end left out because they did not fill a row.
        public let droppedTail: Int
    }

    /// Without `sequenceLength`, one row of every id; with it, consecutive rows of exactly that
    /// many ids. With `bos`, every row starts with it (and holds `sequenceLength - 1` text ids).
    /// `name` (the text file) is what the error for a text shorter than one row names.
    public static func cut(_ ids: [Int], sequenceLength: Int?, bos: Int?, name: String) throws -> Cut {
        let prefix = bos.map { [$0] } ?? []
        // A tokens file holds no empty row (the forward pass has nothing to run).
        guard !ids.isEmpty else { throw TokenizerError.emptyText(file: name) }
        guard let length = sequenceLength else { return Cut(rows: [prefix + ids], droppedTail: 0) }
        let perRow = length - prefix.count
        guard perRow > 0, ids.count >= perRow else {
            throw TokenizerError.textShorterThanRow(file: name, tokens: ids.count, sequenceLength: length)
        }
        let rowCount = ids.count / perRow
        let rows = (0..<rowCount).map { prefix + ids[($0 * perRow)..<(($0 + 1) * perRow)] }
        return Cut(rows: rows, droppedTail: ids.count - rowCount * perRow)
    }

    /// `{"tokens": [[…], …]}` with one line per row, written digit by digit (millions of ids).
    public static func json(_ rows: [[Int]]) -> [UInt8] {
        var out = Array("{\"tokens\": [\n".utf8)
        var digits = [UInt8](repeating: 0, count: 20)
        for (r, row) in rows.enumerated() {
            out += Array((r == 0 ? "  [" : ",\n  [").utf8)
            for (i, id) in row.enumerated() {
                if i > 0 { out += [0x2C, 0x20] }
                var value = id.magnitude, count = 0
                repeat { digits[count] = UInt8(48 + value % 10); value /= 10; count += 1 } while value > 0
                if id < 0 { out.append(0x2D) }
                for k in stride(from: count - 1, through: 0, by: -1) { out.append(digits[k]) }
            }
            out.append(0x5D)
        }
        out += Array("\n]}\n".utf8)
        return out
    }
}
