import Conversion
import Foundation
import GGUF
import SafeTensors

/// What a benchmarked job must leave in its output directory.
public enum OutputExpectation: Sendable {
    /// The same files as this listing (the input's), at the same sizes: `cp -r`.
    case copy(of: [String: Int])
    /// A dsconvert output: `dsconvert.json` present, and the weight files (safetensors or GGUF) on disk
    /// exactly the ones it lists, at the sizes it records.
    case manifest
    /// GGUF written by another tool (llama.cpp's peer): at least one `.gguf` file, each of which the
    /// checked reader opens (header, tensor infos, data within the file) with at least one tensor.
    case gguf
    /// A checkpoint written by another tool (the torch peer, `--extra-job`): it opens (index, every
    /// shard's header tiling its file) and holds at least this many tensors.
    case checkpoint(minimumTensors: Int)
}

/// The size of a verified output; the runs of one job must agree on it (every job is deterministic).
public struct OutputSize: Equatable, Sendable, CustomStringConvertible {
    public let files: Int
    public let bytes: Int
    public var description: String { "\(files) files, \(bytes) bytes" }
}

/// Why an output was rejected; the text goes into the row's "failed (output: …)".
public enum OutputCheckError: Error, Equatable, Sendable, CustomStringConvertible {
    case missing
    case noManifest
    case invalidManifest(String)
    case listedFileMissing(String)
    case sizeDiffers(file: String, onDisk: Int, recorded: Int)
    case unlistedFiles(onDisk: Int, listed: Int)
    case notACopy(OutputSize, input: OutputSize)
    case unreadableCheckpoint(String)
    case tooFewTensors(found: Int, expected: Int)
    case unreadableGGUF(String)
    case differsFromEarlierRun(OutputSize, earlier: OutputSize)

    public var description: String {
        switch self {
        case .missing: return "no output directory"
        case .noManifest: return "no \(ConversionManifest.fileName)"
        case let .invalidManifest(reason): return "unreadable \(ConversionManifest.fileName): \(reason)"
        case let .listedFileMissing(file): return "\(file), listed in the manifest, is missing"
        case let .sizeDiffers(file, onDisk, recorded): return "\(file) has \(onDisk) bytes, the manifest says \(recorded)"
        case let .unlistedFiles(onDisk, listed): return "\(onDisk) weight files on disk, the manifest lists \(listed)"
        case let .notACopy(size, input): return "\(size), the input has \(input)"
        case let .unreadableCheckpoint(reason): return "not a readable checkpoint: \(reason)"
        case let .tooFewTensors(found, expected): return "\(found) tensors, expected at least \(expected)"
        case let .unreadableGGUF(reason): return "not a readable GGUF: \(reason)"
        case let .differsFromEarlierRun(size, earlier): return "\(size), an earlier run wrote \(earlier)"
        }
    }
}

/// Checks a job's output before the bench deletes it, so a job that did nothing cannot look fast.
public enum OutputCheck {
    /// Regular files under `directory`, by path relative to it, with their sizes.
    public static func files(under directory: URL) -> [String: Int] {
        var listing: [String: Int] = [:]
        guard let walk = FileManager.default.enumerator(atPath: directory.path) else { return listing }
        while let relative = walk.nextObject() as? String {
            let attributes = walk.fileAttributes
            if attributes?[.type] as? FileAttributeType == .typeRegular {
                listing[relative] = (attributes?[.size] as? NSNumber)?.intValue ?? 0
            }
        }
        return listing
    }

    static func size(_ listing: [String: Int]) -> OutputSize {
        OutputSize(files: listing.count, bytes: listing.values.reduce(0, +))
    }

    /// Verifies `output` against `expectation` and returns its size.
    public static func verify(_ output: URL, expecting expectation: OutputExpectation) throws(OutputCheckError) -> OutputSize {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: output.path, isDirectory: &isDirectory), isDirectory.boolValue else { throw .missing }
        let listing = files(under: output)
        switch expectation {
        case let .copy(input):
            guard listing == input else { throw .notACopy(size(listing), input: size(input)) }
        case .manifest:
            try verifyManifest(output, listing: listing)
        case .gguf:
            try verifyGGUF(output, listing: listing)
        case let .checkpoint(minimumTensors):
            let tensors: Int
            do { tensors = try Checkpoint(directory: output).tensors.count } catch { throw .unreadableCheckpoint("\(error)") }
            guard tensors >= minimumTensors else { throw .tooFewTensors(found: tensors, expected: minimumTensors) }
        }
        return size(listing)
    }

    private static func verifyManifest(_ output: URL, listing: [String: Int]) throws(OutputCheckError) {
        let loaded: ConversionManifest?
        do { loaded = try ConversionManifest.load(directory: output) } catch { throw .invalidManifest("\(error)") }
        guard let manifest = loaded else { throw .noManifest }
        for record in manifest.files {
            guard let onDisk = listing[record.name] else { throw .listedFileMissing(record.name) }
            guard onDisk == record.bytes else { throw .sizeDiffers(file: record.name, onDisk: onDisk, recorded: record.bytes) }
        }
        let shards = listing.keys.filter { $0.hasSuffix(".safetensors") || $0.hasSuffix(".gguf") }.count
        guard shards == manifest.files.count, shards > 0 else { throw .unlistedFiles(onDisk: shards, listed: manifest.files.count) }
    }

    private static func verifyGGUF(_ output: URL, listing: [String: Int]) throws(OutputCheckError) {
        let files = listing.keys.filter { $0.hasSuffix(".gguf") }.sorted()
        guard !files.isEmpty else { throw .unreadableGGUF("no .gguf file") }
        for name in files {
            do {
                let mapped = try MappedFile(path: output.appendingPathComponent(name).path)
                guard let base = mapped.base else { throw OutputCheckError.unreadableGGUF("\(name) is empty") }
                let file = try GGUFFile(bytes: UnsafeRawBufferPointer(start: base, count: mapped.size))
                guard !file.tensors.isEmpty else { throw OutputCheckError.unreadableGGUF("\(name) holds no tensor") }
            } catch let error as OutputCheckError {
                throw error
            } catch {
                throw .unreadableGGUF("\(name): \(error)")
            }
        }
    }
}
