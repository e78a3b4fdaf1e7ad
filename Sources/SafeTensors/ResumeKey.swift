import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What an interrupted run must share with the run that resumes it before any of its shards is kept.
///
/// Names and sizes are not enough: a base model and its fine-tune have the same ones. The key holds
/// the conversion (stages and options) and, for every file of the input, its resolved path, size,
/// inode, modification and status-change times, and for safetensors files the SHA-256 of the header.
/// Any write to a file moves its status-change time (which `touch` cannot set back) and replacing it
/// moves the inode, so a changed input is noticed without reading its data.
public struct ResumeKey: Equatable, Sendable {
    /// The stages and options of the conversion.
    public var conversion: String
    /// Input file name (and `"."` for the directory itself) → its identity.
    public var input: [String: String]

    public init(conversion: String, input: [String: String]) {
        self.conversion = conversion
        self.input = input
    }

    /// The identity of every top-level file of `directory` (symbolic links followed: a Hugging Face
    /// snapshot's files are links into its blobs).
    public static func identify(directory: URL) -> [String: String] {
        var out: [String: String] = [".": FilePath.resolved(directory.path) ?? directory.path]
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        for name in names {
            let path = directory.appendingPathComponent(name).path
            guard let entry = FileEntry.following(path) else { out[name] = "missing"; continue }
            guard entry.kind == .regular else { out[name] = "\(entry.kind)"; continue }
            var identity = "size=\(entry.size) dev=\(entry.device) ino=\(entry.inode) mtime=\(entry.modified) ctime=\(entry.changed)"
            if name.hasSuffix(".safetensors") { identity += " header=\(headerHash(path) ?? "unreadable")" }
            out[name] = identity
        }
        return out
    }

    /// SHA-256 of a safetensors file's length prefix and header, read with `pread` (no mapping).
    static func headerHash(_ path: String) -> String? {
        guard let (fd, entry) = try? FilePath.openRegularFile(path) else { return nil }
        defer { close(fd) }
        var prefix: UInt64 = 0
        guard entry.size >= 8, pread(fd, &prefix, 8, 0) == 8 else { return nil }
        // Compared as read, before it becomes an Int: any file named *.safetensors beside the checkpoint
        // is identified, and a length of 2^63 or more trapped (found by an audit).
        let declared = UInt64(littleEndian: prefix)
        guard declared <= SafeTensorsHeader.maximumHeaderLength, declared <= UInt64(entry.size - 8) else { return nil }
        let length = Int(declared)
        var bytes = [UInt8](repeating: 0, count: 8 + length)
        let read = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard read == bytes.count else { return nil }
        return bytes.withUnsafeBytes { SHA256.hex($0) }
    }

    /// The journal's first line.
    public var journalHeader: String {
        let files = input.keys.sorted().map { "\(CompactJSON.quoted($0)):\(CompactJSON.quoted(input[$0]!))" }.joined(separator: ",")
        return "{\"conversion\":\(CompactJSON.quoted(conversion)),\"input\":{\(files)}}\n"
    }

    /// Why a journal written under `recorded` cannot be resumed under this key; nil when it can.
    public func mismatch(recorded: JSONValue?) -> String? {
        guard let recorded, let conversion = recorded["conversion"]?.stringValue, case let .object(items)? = recorded["input"] else {
            return "the interrupted run left no readable journal"
        }
        guard conversion == self.conversion else { return "the interrupted run used other options or stages" }
        var previous: [String: String] = [:]
        for (name, value) in items { previous[name] = value.stringValue ?? "" }
        if previous["."] != input["."] { return "the interrupted run read another input directory (\(previous["."] ?? "?"))" }
        for name in Set(previous.keys).union(input.keys).sorted() where previous[name] != input[name] {
            switch (previous[name], input[name]) {
            case (nil, _): return "input file \(name) is new since the interrupted run"
            case (_, nil): return "input file \(name) is gone since the interrupted run"
            default: return "input file \(name) changed since the interrupted run (\(Self.changedFields(previous[name]!, input[name]!)))"
            }
        }
        return nil
    }

    private static func changedFields(_ a: String, _ b: String) -> String {
        func fields(_ s: String) -> [String: String] {
            Dictionary(s.split(separator: " ").map { part -> (String, String) in
                let kv = part.split(separator: "=", maxSplits: 1)
                return (String(kv[0]), kv.count > 1 ? String(kv[1]) : "")
            }, uniquingKeysWith: { x, _ in x })
        }
        let fa = fields(a), fb = fields(b)
        let changed = Set(fa.keys).union(fb.keys).sorted().filter { fa[$0] != fb[$0] }
        return changed.isEmpty ? "type" : changed.joined(separator: ", ")
    }
}
