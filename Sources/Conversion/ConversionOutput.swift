import Foundation
import SafeTensors

/// A checkpoint being written by a stage: safetensors data, copied side files, `config.json` and
/// the manifest, all in a hidden directory that is renamed into place only when complete.
public final class ConversionOutput {
    public let input: URL
    public let directory: AtomicOutputDirectory
    public let writer: CheckpointWriter
    /// Every stage the manifest records: the input's, then this run's.
    public let stages: [ConversionManifest.Stage]

    /// Files never copied through: the weights and index (rewritten) and the manifest (appended).
    static func isRewritten(_ name: String) -> Bool {
        name.hasSuffix(".safetensors") || name == Checkpoint.indexFileName || name == ConversionManifest.fileName
            || name.hasPrefix(".")
    }

    /// - Parameter resume: adopt the work directory of an interrupted run of the same conversion
    ///   and keep its finished shards (verified by SHA-256).
    public convenience init(input: URL, output: URL, force: Bool, layout: CheckpointLayout, stage: ConversionManifest.Stage, resume: Bool = false) throws {
        let stages = (try ConversionManifest.load(directory: input)?.stages ?? []) + [stage]
        try self.init(input: input, output: output, force: force, layout: layout, stages: stages, newStages: [stage], resume: resume)
    }

    /// - Parameters:
    ///   - stages: what the manifest records (the input's stages and this run's).
    ///   - newStages: this run's stages, which identify it for `--resume`.
    public init(input: URL, output: URL, force: Bool, layout: CheckpointLayout, stages: [ConversionManifest.Stage],
                newStages: [ConversionManifest.Stage], resume: Bool = false) throws {
        try checkOutputOutsideInput(input: input, output: output)
        self.input = input
        self.stages = stages
        directory = try AtomicOutputDirectory(final: output, force: force, resume: resume)
        writer = CheckpointWriter(layout: layout, directory: directory.temporaryURL,
                                  fingerprint: Self.fingerprint(stages: newStages, input: input), resume: directory.resumed)
    }

    /// Identifies a conversion for `--resume`: its stages, their options, and the input's files and sizes.
    public static func fingerprint(stages: [ConversionManifest.Stage], input: URL) -> String {
        var text = stages.map { stage in
            stage.stage + "|" + stage.toolVersion + "|" + stage.options.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        }.joined(separator: ";")
        let fm = FileManager.default
        for name in ((try? fm.contentsOfDirectory(atPath: input.path)) ?? []).sorted() {
            let size = (try? fm.attributesOfItem(atPath: input.appendingPathComponent(name).path))?[.size] as? Int ?? -1
            text += "|\(name):\(size)"
        }
        return Array(text.utf8).withUnsafeBytes { SHA256.hex($0) }
    }

    /// Copies the input's side files (tokenizer, generation config, …) unchanged; `config.json` is
    /// copied too unless the stage writes its own afterwards.
    public func copySideFiles() throws {
        try writer.waitForShards()
        try Self.copySideFiles(from: input, to: directory.temporaryURL)
    }

    /// Copies the top-level files of `input` that no stage rewrites (and none of `excluded`) into
    /// `directory`, replacing any copy an interrupted run left there.
    static func copySideFiles(from input: URL, to directory: URL, excluding excluded: Set<String> = []) throws {
        let fm = FileManager.default
        let names = (try? fm.contentsOfDirectory(atPath: input.path)) ?? []
        for name in names.sorted() where !isRewritten(name) && !excluded.contains(name) {
            let source = input.appendingPathComponent(name)
            var isDirectory: ObjCBool = false
            guard fm.fileExists(atPath: source.path, isDirectory: &isDirectory), !isDirectory.boolValue else { continue }
            try? fm.removeItem(at: directory.appendingPathComponent(name))
            do {
                try fm.copyItem(at: source, to: directory.appendingPathComponent(name))
            } catch {
                throw ConversionError.cannotCopy(file: source.path, reason: (error as NSError).localizedDescription)
            }
        }
    }

    /// Writes a JSON side file (e.g. a rewritten `config.json`).
    public func writeFile(_ name: String, data: Data) throws {
        try writer.waitForShards()
        let url = directory.temporaryURL.appendingPathComponent(name)
        try? FileManager.default.removeItem(at: url)
        try AtomicFile.write(data, to: url)
    }

    /// Finishes the weights, writes the manifest with this stage appended, and moves the output into place.
    public func commit() throws {
        try writer.finish()
        var files: [ConversionManifest.FileRecord] = []
        for shard in writer.layout.shards {
            let path = directory.temporaryURL.appendingPathComponent(shard.fileName).path
            files.append(.init(name: shard.fileName, bytes: shard.fileSize, sha256: try writer.sha256(of: shard.fileName) ?? SHA256.hex(fileAt: path)))
        }
        try writeFile(ConversionManifest.fileName, data: try ConversionManifest(stages: stages, files: files).encoded())
        try directory.commit()
    }

    /// Parses a shard size like Hugging Face's `max_shard_size`: "5GB" (10^9), "5GiB" (2^30), "500MB", or bytes.
    public static func parseSize(_ text: String) throws -> Int {
        let units: [(String, Int)] = [("GIB", 1 << 30), ("MIB", 1 << 20), ("KIB", 1 << 10), ("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1_000), ("B", 1)]
        let upper = text.uppercased().trimmingCharacters(in: .whitespaces)
        for (suffix, factor) in units where upper.hasSuffix(suffix) {
            // At least one byte and at most 2^62 (far beyond any disk): Int(1e30 * 1e9) would trap.
            guard let value = Double(upper.dropLast(suffix.count)), case let bytes = value * Double(factor),
                  bytes >= 1, bytes <= 0x1p62 else { throw ConversionError.invalidSize(text: text) }
            return Int(bytes)
        }
        guard let value = Int(upper), value > 0 else { throw ConversionError.invalidSize(text: text) }
        return value
    }
}

/// Refuses an output that is the input or inside it (symbolic links resolved).
func checkOutputOutsideInput(input: URL, output: URL) throws {
    let inputPath = input.standardizedFileURL.resolvingSymlinksInPath().path
    let standardized = output.standardizedFileURL
    let outputParent = standardized.deletingLastPathComponent().resolvingSymlinksInPath().path
    let resolvedOutput = (outputParent as NSString).appendingPathComponent(standardized.lastPathComponent)
    if resolvedOutput == inputPath || resolvedOutput.hasPrefix(inputPath + "/") {
        throw ConversionError.outputInsideInput(output: standardized.path, input: inputPath)
    }
}
