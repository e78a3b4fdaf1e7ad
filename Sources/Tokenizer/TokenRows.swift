/// Token ids cut into the equal-length rows of a tokens file (`{"tokens": [[…]]}`).
public enum TokenRows {
    /// The rows, and how many ids at the end were left out (shorter than one row).
    public struct Cut: Equatable, Sendable {
        public let rows: [[Int]]
        public let droppedTail: Int
    }

    /// Without `sequenceLength`, one row of every id; with it, consecutive rows of exactly that
    /// many ids. With `bos`, every row starts with it (and holds `sequenceLength - 1` text ids).
    /// `name` (the text file) is what the error for a text shorter than one row names.
    public static func cut(_ ids: [Int], sequenceLength: Int?, bos: Int?, name: String) throws -> Cut {
        let prefix = bos.map { [$0] } ?? []
        guard let length = sequenceLength else { return Cut(rows: [prefix + ids], droppedTail: 0) }
        let perRow = length - prefix.count
        guard perRow > 0, ids.count >= perRow else {
            throw TokenizerError.textShorterThanRow(file: name, tokens: ids.count, sequenceLength: length)
        }
        let rowCount = ids.count / perRow
        let rows = (0..<rowCount).map { prefix + ids[($0 * perRow)..<(($0 + 1) * perRow)] }
        return Cut(rows: rows, droppedTail: ids.count - rowCount * perRow)
    }

    /// `{"tokens": [[…], …]}` on one line per row.
    public static func json(_ rows: [[Int]]) -> String {
        let body = rows.map { "[" + $0.map(String.init).joined(separator: ", ") + "]" }.joined(separator: ",\n  ")
        return "{\"tokens\": [\n  " + body + "\n]}\n"
    }
}
