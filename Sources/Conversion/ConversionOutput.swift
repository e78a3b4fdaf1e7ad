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
    /// - Parameter otherInputs: further directories or files the run reads (export's --tokenizer), which
    ///   the output may not be, contain or lie inside either.
    public convenience init(input: URL, output: URL, force: Bool, layout: CheckpointLayout, stage: ConversionManifest.Stage, resume: Bool = false,
                            otherInputs: [URL] = []) throws {
        let stages = (try ConversionManifest.load(directory: input)?.stages ?? []) + [stage]
        try self.init(input: input, output: output, force: force, layout: layout, stages: stages, newStages: [stage], resume: resume,
                      otherInputs: otherInputs)
    }

    /// - Parameters:
    ///   - stages: what the manifest records (the input's stages and this run's).
    ///   - newStages: this run's stages, which identify it for `--resume`.
    public init(input: URL, output: URL, force: Bool, layout: CheckpointLayout, stages: [ConversionManifest.Stage],
                newStages: [ConversionManifest.Stage], resume: Bool = false, otherInputs: [URL] = []) throws {
        self.input = input
        self.stages = stages
        directory = try Self.openDirectory(input: input, output: output, force: force, resume: resume, otherInputs: otherInputs)
        writer = CheckpointWriter(layout: layout, directory: directory.temporaryURL,
                                  key: Self.resumeKey(stages: newStages, input: input), resume: directory.resumed)
    }

    /// Identifies a conversion for `--resume`: its stages and their options, and the input's identity
    /// (resolved path; every file's size, inode, times and safetensors header hash).
    public static func resumeKey(stages: [ConversionManifest.Stage], input: URL) -> ResumeKey {
        let conversion = stages.map { stage in
            stage.stage.rawValue + "|" + stage.toolVersion + "|" + stage.options.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        }.joined(separator: ";")
        return ResumeKey(conversion: conversion, input: ResumeKey.identify(directory: input))
    }

    /// Copies the input's side files (tokenizer, generation config, …) unchanged; `config.json` is
    /// copied too unless the stage writes its own afterwards.
    public func copySideFiles() throws {
        try writer.waitForShards()
        try Self.copySideFiles(from: input, to: directory.temporaryURL)
    }

    /// Copies the top-level files of `input` that no stage rewrites (and none of `excluded`) into
    /// `directory` as regular files, replacing any copy an interrupted run left there.
    ///
    /// A side file that is a symbolic link is copied from its target, so the output never holds a
    /// link (a Hugging Face snapshot's relative links into `../../blobs` would dangle). The target
    /// must lie inside the input directory, or, for a snapshot (`models--ORG--NAME/snapshots/REV`),
    /// inside that model's cache directory: a link to anything else (`~/.ssh/id_rsa`) is refused,
    /// since outputs get uploaded. Only regular files are read (a FIFO would hang the copy).
    static func copySideFiles(from input: URL, to directory: URL, excluding excluded: Set<String> = []) throws {
        let allowed = allowedSideFileRoot(input)
        for file in try sideFiles(in: input, excluding: excluded) {
            let destination = directory.appendingPathComponent(file.lastPathComponent)
            try? FileManager.default.removeItem(at: destination)
            do {
                try FilePath.copyRegularFile(from: file.path, to: destination.path, allowedRoot: allowed)
            } catch {
                throw ConversionError.cannotCopy(file: file.path, reason: (error as? LocalizedError)?.errorDescription ?? "\(error)")
            }
        }
    }

    /// Where a side file may resolve to: the input directory, or a snapshot's model cache directory.
    static func allowedSideFileRoot(_ input: URL) -> String {
        let root = FilePath.resolved(input.path) ?? input.path
        return snapshotCacheRoot(root) ?? root
    }

    /// The atomic output directory of a conversion of `input`, once its side files are known to be
    /// copyable (a refused link costs nothing); shared by every stage's sink.
    static func openDirectory(input: URL, output: URL, force: Bool, resume: Bool, otherInputs: [URL] = []) throws -> AtomicOutputDirectory {
        _ = try sideFiles(in: input)
        return try AtomicOutputDirectory(final: output, inputs: [input] + otherInputs, marker: ConversionManifest.fileName, force: force, resume: resume)
    }

    /// The side files `copySideFiles` will copy, their link targets checked before any work starts
    /// so a refused link costs nothing (and again on the opened file when copied).
    static func sideFiles(in input: URL, excluding excluded: Set<String> = []) throws -> [URL] {
        let allowed = allowedSideFileRoot(input)
        var files: [URL] = []
        for name in ((try? FileManager.default.contentsOfDirectory(atPath: input.path)) ?? []).sorted() where !isRewritten(name) && !excluded.contains(name) {
            let source = input.appendingPathComponent(name)
            guard let entry = FileEntry.following(source.path), entry.kind != .directory else { continue }
            guard let target = FilePath.resolved(source.path), FilePath.isWithin(target, allowed) else {
                throw ConversionError.sideFileOutsideInput(file: source.path, target: FilePath.resolved(source.path) ?? "a missing file")
            }
            guard entry.kind == .regular else { throw ConversionError.cannotCopy(file: source.path, reason: "not a regular file") }
            files.append(source)
        }
        return files
    }

    /// For a Hugging Face cache snapshot `…/models--ORG--NAME/snapshots/REV`, the model's cache
    /// directory `…/models--ORG--NAME` (whose `blobs/` the snapshot's links point into).
    static func snapshotCacheRoot(_ resolvedInput: String) -> String? {
        let parts = resolvedInput.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count >= 3, parts[parts.count - 2] == "snapshots", parts[parts.count - 3].hasPrefix("models--") else { return nil }
        return parts.dropLast(2).joined(separator: "/")
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
        try writeFile(ConversionManifest.fileName, data: try ConversionManifest(stages: stages, files: files, layoutBasis: ShardSize.Basis.of(input)).encoded())
        try directory.commit()
    }

    /// Parses a shard size like Hugging Face's `max_shard_size`: "5GB" (10^9), "5GiB" (2^30), "500MB", or bytes;
    /// also gguf-split's "5G" and "500M" (10^9, 10^6), which `export --split-max-size` users write.
    /// Sizes must be at least one byte and at most 2^50 (1 PiB): anything else (inf, 1e30GB) is a typo.
    public static func parseSize(_ text: String) throws -> Int {
        let units: [(String, Double)] = [("GIB", 0x1p30), ("MIB", 0x1p20), ("KIB", 0x1p10), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("B", 1), ("G", 1e9), ("M", 1e6), ("K", 1e3)]
        let upper = text.uppercased().trimmingCharacters(in: .whitespaces)
        let (number, factor) = units.first { upper.hasSuffix($0.0) }.map { (String(upper.dropLast($0.0.count)), $0.1) } ?? (upper, 1)
        guard let value = Double(number), value.isFinite, case let bytes = (value * factor).rounded(.down), bytes >= 1, bytes <= 0x1p50 else {
            throw ConversionError.invalidSize(text: text)
        }
        return Int(bytes)
    }
}
