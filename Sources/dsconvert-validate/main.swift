import CLI
import DSConvertCommands
import Foundation

exit(Entry.single(ValidateCommand.self, invocation: "dsconvert-validate"))
