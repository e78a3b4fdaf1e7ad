import Foundation

/// A Hugging Face checkpoint directory: shards listed by `model.safetensors.index.json`,
/// or a single `model.safetensors`.
public final class Checkpoint: Sendable {
    public static let indexFileName = "model.safetensors.index.json"
    public static let singleFileName = "model.safetensors"
    /// What `shard` writes at the root of its output, beside device-0 … device-(D-1).
    public static let placementFileName = "placement.json"

    public let directory: URL
    /// Shard file names in the order they first appear (sorted for an index).
    public let shardNames: [String]
    private let shards: [String: SafeTensorsFile]
    private let location: [String: String]
    /// All tensors, in shard order then data order within each shard.
    public let tensors: [TensorInfo]
    /// `metadata` of the index file, if there is one.
    public let indexMetadata: [String: JSONValue]?

    /// Opens and validates every shard and the index's agreement with them.
    public init(directory: URL) throws {
        self.directory = directory
        let fm = FileManager.default
        let indexURL = directory.appendingPathComponent(Self.indexFileName)
        let singleURL = directory.appendingPathComponent(Self.singleFileName)
        var shardFiles: [String: SafeTensorsFile] = [:]
        var where_: [String: String] = [:]
        var ordered: [TensorInfo] = []

        if fm.fileExists(atPath: indexURL.path) {
            let (map, metadata) = try Self.readIndex(indexURL)
            indexMetadata = metadata
            let names = Array(Set(map.values)).sorted()
            for shard in names {
                let shardURL = directory.appendingPathComponent(shard)
                guard Self.isShardName(shard), fm.fileExists(atPath: shardURL.path) else {
                    let tensor = map.filter { $0.value == shard }.keys.sorted().first ?? ""
                    throw SafeTensorsError.indexNamesMissingShard(file: indexURL.path, shard: shard, tensor: tensor)
                }
                shardFiles[shard] = try SafeTensorsFile(path: shardURL.path)
            }
            for (tensor, shard) in map.sorted(by: { $0.key < $1.key }) where !shardFiles[shard]!.contains(tensor) {
                throw SafeTensorsError.shardLacksTensor(file: indexURL.path, shard: shard, tensor: tensor)
            }
            for shard in names {
                for info in shardFiles[shard]!.tensors {
                    guard map[info.name] == shard else {
                        if let other = map[info.name] {
                            throw SafeTensorsError.tensorInTwoShards(tensor: info.name, first: other, second: shard)
                        }
                        throw SafeTensorsError.tensorNotInIndex(file: indexURL.path, shard: shard, tensor: info.name)
                    }
                    where_[info.name] = shard
                    ordered.append(info)
                }
            }
            shardNames = names
        } else if fm.fileExists(atPath: singleURL.path) {
            indexMetadata = nil
            let file = try SafeTensorsFile(path: singleURL.path)
            shardFiles[Self.singleFileName] = file
            for info in file.tensors { where_[info.name] = Self.singleFileName }
            ordered = file.tensors
            shardNames = [Self.singleFileName]
        } else if fm.fileExists(atPath: directory.appendingPathComponent(Self.placementFileName).path) {
            throw SafeTensorsError.shardedOutput(directory: directory.path)
        } else {
            throw SafeTensorsError.noCheckpoint(directory: directory.path)
        }
        shards = shardFiles
        location = where_
        tensors = ordered
    }

    /// A file name in the checkpoint's own directory: no path, and not "", "." or ".." (which name
    /// directories: an index pointing a tensor there was reported as an unreadable directory).
    private static func isShardName(_ name: String) -> Bool { !name.contains("/") && !["", ".", ".."].contains(name) }

    /// The weight files of the checkpoint in `directory`, without opening them: the index's shards
    /// when there is an index (none if it cannot be read, as `init` then refuses the directory), else
    /// `model.safetensors`. Other `*.safetensors` files beside them (goldens, forward outputs) are not
    /// the checkpoint's.
    public static func shardFileNames(in directory: URL) -> [String] {
        let indexURL = directory.appendingPathComponent(indexFileName)
        if FileManager.default.fileExists(atPath: indexURL.path) {
            guard let (map, _) = try? readIndex(indexURL) else { return [] }
            return Set(map.values).filter(isShardName).sorted()
        }
        return FileManager.default.fileExists(atPath: directory.appendingPathComponent(singleFileName).path) ? [singleFileName] : []
    }

    private static func readIndex(_ url: URL) throws -> ([String: String], [String: JSONValue]?) {
        let data: Data
        do { data = try FilePath.readRegularFile(url.path) } catch {
            throw SafeTensorsError.cannotOpen(file: url.path, reason: error.localizedDescription)
        }
        return try parseIndex(data, file: url.path)
    }

    /// Parses `model.safetensors.index.json`: tensor → shard file, and the metadata object.
    public static func parseIndex(_ data: Data, file: String) throws -> ([String: String], [String: JSONValue]?) {
        let url = URL(fileURLWithPath: file)
        let root: JSONValue
        do { root = try JSONParser.parse(data) } catch {
            throw SafeTensorsError.invalidIndex(file: url.path, reason: "\(error)")
        }
        guard case let .object(weightMap)? = root["weight_map"] else {
            throw SafeTensorsError.invalidIndex(file: url.path, reason: "no \"weight_map\" object")
        }
        var map: [String: String] = [:]
        for (tensor, shard) in weightMap {
            guard let name = shard.stringValue else {
                throw SafeTensorsError.invalidIndex(file: url.path, reason: "shard for '\(tensor)' is not a string")
            }
            map[tensor] = name
        }
        var metadata: [String: JSONValue]?
        if case let .object(items)? = root["metadata"] { metadata = Dictionary(items, uniquingKeysWith: { a, _ in a }) }
        return (map, metadata)
    }

    public func contains(_ name: String) -> Bool { location[name] != nil }
    public func info(_ name: String) -> TensorInfo? { location[name].flatMap { shards[$0]?.info(name) } }
    public func shardName(of name: String) -> String? { location[name] }
    public func shard(_ name: String) -> SafeTensorsFile? { shards[name] }

    /// The bytes of tensor `name`, without copying.
    public func view(_ name: String) throws -> TensorView {
        guard let shard = location[name], let file = shards[shard] else { throw SafeTensorsError.tensorNotFound(tensor: name) }
        return try file.view(name)
    }

    /// Reads tensor `name` into the page cache ahead of its use; returns the bytes read.
    @discardableResult
    public func prefetch(_ name: String, scratch: UnsafeMutableRawPointer) -> Int {
        guard let shard = location[name] else { return 0 }
        return shards[shard]?.prefetch(name, scratch: scratch) ?? 0
    }

    /// Asks the kernel to start reading `bytes` of tensor `name`'s data, without waiting; nothing for
    /// a name the checkpoint does not hold.
    public func willNeed(_ name: String, bytes: Range<Int>) {
        if let shard = location[name] { shards[shard]?.willNeed(name, bytes: bytes) }
    }

    /// Drops tensor `name`'s pages from the resident set once it has been used.
    public func release(_ name: String) {
        if let shard = location[name] { shards[shard]?.release(name) }
    }

    /// Path of the shard holding `name`, for error messages.
    public func path(of name: String) -> String {
        location[name].map { directory.appendingPathComponent($0).path } ?? directory.path
    }

    /// Sum of tensor data bytes (what an index's `total_size` records).
    public var totalTensorBytes: Int { tensors.reduce(0) { $0 + $1.byteCount } }
}
