// Compile-only stub of the Android framework API (real signatures, no behaviour): see android_demo/tools/README.md.
package android.widget;

public interface Adapter {
    int getCount();
    Object getItem(int position);
}
