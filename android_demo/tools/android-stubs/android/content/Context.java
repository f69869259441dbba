// Compile-only stub of the Android framework API (real signatures, no behaviour): see android_demo/tools/README.md.
package android.content;

import android.content.pm.PackageManager;
import java.io.File;

public abstract class Context {
    public Context() { throw new RuntimeException("Stub!"); }
    public abstract PackageManager getPackageManager();
    public abstract String getPackageName();
    public abstract File getFilesDir();
    public abstract File getExternalFilesDir(String type);
    public final String getString(int resId) { throw new RuntimeException("Stub!"); }
    public final String getString(int resId, Object... formatArgs) { throw new RuntimeException("Stub!"); }
}
